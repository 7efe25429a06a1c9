"""`kommune edge check|run`: the sample passes, a bad site file is one line naming the key
(--json: all of them), usage errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

KOMMUNE = str(Path(sys.executable).with_name("kommune"))
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "docs" / "site.example.toml"

MINIMAL = '[agent]\nid = "a1"\nsite = "lab"\n\n[broker]\nhost = "localhost"\n'


def _kommune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KOMMUNE, *args], capture_output=True, text=True, timeout=60, check=False)


def _site(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_the_sample_site_file_passes_check() -> None:
    proc = _kommune("edge", "check", "--site", str(SAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith(f"{SAMPLE}: valid\n")
    for words in (
        "nordby-edge-1 at site nordby",
        "mqtts://mqtt.nordby.kommune.example:8883",
        "storgata-bus: serial /dev/ttyUSB0 at 115200 baud, 9 nodes",
        "locks    2: 1017, 1018",
        "http://127.0.0.1:9470/healthz",
    ):
        assert words in proc.stdout


def test_check_json_is_the_whole_site() -> None:
    proc = _kommune("edge", "check", "--site", str(SAMPLE), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert doc["agent"] == {"id": "nordby-edge-1", "site": "nordby", "stop_timeout_s": 10.0}
    assert doc["broker"]["port"] == 8883 and doc["broker"]["tls"] is True
    assert [link["kind"] for link in doc["links"]] == ["serial", "udp"]
    assert doc["health"]["bind"] == "127.0.0.1:9470"
    assert doc["outbox"]["audit"] == {"max_rows": 5_000_000, "max_age_days": None}


def test_a_bad_site_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = _site(tmp_path, MINIMAL.replace('"localhost"', '"localhost"\nport = "x"'))
    proc = _kommune("edge", "check", "--site", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"kommune edge: error: {path}: broker.port: expected an integer 1-65535, got 'x'\n"
    )


def test_several_problems_are_one_line_and_json_lists_them_all(tmp_path: Path) -> None:
    text = "typo = 1\n" + MINIMAL.replace('"a1"', '"A1"') + '[health]\nbind = "x"\n'
    path = _site(tmp_path, text)
    proc = _kommune("edge", "check", "--site", str(path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"kommune edge: error: {path}: agent.id: expected a name")
    assert proc.stderr.endswith("(and 2 more problems; --json lists all)\n")
    listed = _kommune("edge", "check", "--site", str(path), "--json")
    assert listed.returncode == 2
    doc = json.loads(listed.stdout)
    assert doc["ok"] is False
    assert [p.split(":")[0] for p in doc["problems"]] == ["agent.id", "health.bind", "typo"]


def test_bad_toml_is_one_line_with_the_line_number(tmp_path: Path) -> None:
    path = _site(tmp_path, MINIMAL + "[[links]]\nid = bus\n")
    proc = _kommune("edge", "check", "--site", str(path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"kommune edge: error: {path}: line 8, column 6: ")
    assert proc.stderr.endswith("(not valid TOML)\n")
    assert proc.stderr.count("\n") == 1


def test_run_refuses_a_bad_site_file_before_starting(tmp_path: Path) -> None:
    path = _site(tmp_path, MINIMAL + "[outbox]\ndisk_budget_mb = 0\n")
    proc = _kommune("edge", "run", "--site", str(path))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"kommune edge: error: {path}: outbox.disk_budget_mb: expected an integer 16-1048576,"
        " got 0\n"
    )


def test_a_missing_site_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = _kommune("edge", "check", "--site", str(missing))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"kommune edge: error: {missing}: cannot read it: No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["edge"], "the following arguments are required: ACTION"),
        (["edge", "check"], "the following arguments are required: --site"),
        (["edge", "launch"], "invalid choice: 'launch'"),
        (["edge", "run", "--site", "s.toml", "--log-format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    proc = _kommune(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert message in proc.stderr


@pytest.mark.parametrize("action", ["check", "run"])
def test_each_action_has_help_with_an_example(action: str) -> None:
    proc = _kommune("edge", action, "--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    assert f"kommune edge {action} --site" in proc.stdout
