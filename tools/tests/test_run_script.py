"""./run sets up .venv loudly: a failed install stops it, shows pip's output, leaves no stamp.

Each test runs ./run on a copy of the files it reads (run, pyproject.toml, setup.py,
constraints.txt) in tmp_path, so the real .venv is never touched. The copy's .venv is
either a fake whose `python -m pip` only logs its call (and fails on demand), or a real
venv without pip that borrows this environment's pip through a .pth file, with no
package index: a real pip that cannot install anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_INPUTS = ("run", "pyproject.toml", "setup.py", "constraints.txt")

#: Stands in for .venv/bin/python: `-m pip ...` is logged (and fails when $FAKE_PIP_FAIL is
#: part of the call); `--target DIR` gets a machine.pyi; anything else is the real Python.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    shift 2
    echo "pip $*" >>"$FAKE_PIP_LOG"
    case "$*" in
        *"$FAKE_PIP_FAIL"*)
            echo "ERROR: No matching distribution found for no-such-thing" >&2
            exit 1;;
    esac
    echo "WARNING: Location 'x' is ignored: it is either a non-existing path or lacks a file."
    echo "a warning worth reading"
    while [ $# -gt 0 ]; do
        if [ "$1" = "--target" ]; then mkdir -p "$2" && touch "$2/machine.pyi"; fi
        shift
    done
    exit 0
fi
exec "{python}" "$@"
"""


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in RUN_INPUTS:
        shutil.copy2(REPO / name, project / name)
    # A stub on PATH so ./run never reaches for apt-get, installed Mosquitto or not.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    mosquitto = stubs / "mosquitto"
    mosquitto.write_text("#!/bin/sh\nexit 0\n")
    mosquitto.chmod(0o755)
    return project


def _fake_venv(project: Path) -> Path:
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.replace("{python}", sys.executable))
    kommune = bin_dir / "kommune"
    kommune.write_text('#!/bin/sh\necho "kommune ran: $*"\n')
    for script in (python, kommune):
        script.chmod(0o755)
    return project / ".venv"


def _run(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    base["PATH"] = f"{project.parent / 'bin'}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHON"] = sys.executable
    base.update(env or {})
    return subprocess.run(
        [str(project / "run"), *args],
        cwd=project,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _fake_env(project: Path, fail: str = "no-step-fails-0b1f") -> dict[str, str]:
    return {"FAKE_PIP_LOG": str(project / "pip-calls.log"), "FAKE_PIP_FAIL": fail}


def test_a_working_setup_is_quiet_and_stamps_the_venv(tmp_path: Path) -> None:
    project = _project(tmp_path)
    venv = _fake_venv(project)
    proc = _run(project, "kommune", "--help", env=_fake_env(project))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "kommune ran: --help\n"
    assert (venv / ".kommune-setup").is_file()
    calls = (project / "pip-calls.log").read_text().splitlines()
    assert len(calls) == 3  # pip itself, the project, the MicroPython stubs
    # pip's known chatter is filtered, anything else it says is shown
    assert "WARNING: Location" not in proc.stderr
    assert proc.stderr.count("a warning worth reading") == 3
    # the second run finds the stamp and installs nothing
    again = _run(project, "kommune", "x", env=_fake_env(project))
    assert again.returncode == 0
    assert again.stderr == ""
    assert len((project / "pip-calls.log").read_text().splitlines()) == 3


@pytest.mark.parametrize("failing_step", ["--upgrade pip", "-e ", "--target"])
def test_a_failed_step_stops_with_pips_output_and_no_stamp(
    tmp_path: Path, failing_step: str
) -> None:
    project = _project(tmp_path)
    venv = _fake_venv(project)
    (venv / ".kommune-setup").write_text("a stamp from an older setup\n")
    proc = _run(project, "kommune", "--help", env=_fake_env(project, fail=failing_step))
    assert proc.returncode != 0
    assert proc.stdout == ""  # the command did not run
    assert "ERROR: No matching distribution found for no-such-thing" in proc.stderr
    assert "run: error: pip install failed" in proc.stderr
    assert not (venv / ".kommune-setup").exists(), "a failed setup left .venv marked ready"
    # no step after the failed one ran
    calls = (project / "pip-calls.log").read_text().splitlines()
    assert failing_step in calls[-1]


def test_a_real_pip_failure_is_shown(tmp_path: Path) -> None:
    """A real pip with no package index cannot build the project: ./run must say so."""
    project = _project(tmp_path)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert "dependencies = [\n" in text
    pyproject.write_text(
        text.replace("dependencies = [\n", 'dependencies = [\n    "kommune-no-such-pkg==0",\n', 1)
    )
    venv = project / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # pip (only) comes from this environment; everything pip installs would land in the copy.
    Path(purelib, "borrowed-pip.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (venv / ".kommune-setup").write_text("stale\n")
    proc = _run(
        project,
        "kommune",
        "--help",
        env={"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1"},
    )
    assert proc.returncode != 0
    assert "ERROR: " in proc.stderr, proc.stderr
    assert "run: error: pip install failed" in proc.stderr
    assert not (venv / ".kommune-setup").exists()
    assert proc.stdout == ""
