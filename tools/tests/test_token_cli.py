"""`kommune token issue|revoke` and the token file, as a person types them; `kommune unlock`'s
checks that need no radio (the window, the file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kommune.edge.keystore import KeyStore
from kommune.edge.lock import tokenfile
from kommune.edge.lock.times import TimeFormatError, parse_time
from kommune.protocols import token as tokens
from kommune.protocols.lock_wire import RIGHT_LOCK, RIGHT_UNLOCK
from kommune.protocols.seal import SealKey

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


def _kommune(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "KOMMUNE_KEYSTORE": str(tmp_path / "ks"), **(env or {})}
    environ.pop("KOMMUNE_BLE_TRANSPORT", None)
    return subprocess.run(
        [KOMMUNE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=environ,
    )


def test_times_as_people_type_them() -> None:
    now = 1_800_000_000.5
    assert parse_time("now", now_s=now) == 1_800_000_000
    assert parse_time("+45m", now_s=now) == 1_800_000_000 + 2700
    assert parse_time("-1d", now_s=now) == 1_800_000_000 - 86_400
    assert parse_time("2026-12-01T08:00+01:00") == 1_796_108_400
    assert parse_time("2026-12-01T07:00Z") == 1_796_108_400
    with pytest.raises(TimeFormatError, match="ISO 8601"):
        parse_time("tomorrow")


def test_issue_writes_an_owner_only_file_that_opens_at_the_lock(tmp_path: Path) -> None:
    proc = _kommune(
        tmp_path,
        *("token", "issue", "--lock", "1017", "--holder", "4242"),
        *("--from", "2026-12-01T08:00+01:00", "--until", "2026-12-01T09:00+01:00"),
        *("--rights", "unlock,lock", "--address", "f0:4b:00:00:00:01", "--json"),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert "session_key" not in summary and "token" not in summary
    path = tmp_path / "token-1017-4242.json"
    assert summary["file"] == "token-1017-4242.json"
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == "kommune-token" and doc["version"] == 1
    assert doc["not_before"] == "2026-12-01T07:00:00Z" and doc["not_after_s"] == 1_796_112_000
    assert doc["rights"] == ["unlock", "lock"] and doc["lock_address"] == "f0:4b:00:00:00:01"
    token = tokenfile.read(path)
    assert token.rights == RIGHT_UNLOCK | RIGHT_LOCK
    # The lock (which holds only its derived token key) opens it and finds the fields.
    with KeyStore.open(tmp_path / "ks") as store:
        token_key = store.lock_keys(1017).token_key
        assert store.issued(1017)[token.token_id]["holder_id"] == 4242
    opened = tokens.authenticate(token.token, SealKey(token_key), 1017)
    assert (opened.holder_id, opened.token_id, opened.epoch) == (4242, token.token_id, 0)
    assert tokens.session_key(SealKey(token_key), opened) == token.session_key

    again = _kommune(tmp_path, "token", "issue", "--lock", "1017", "--holder", "4242",
                     "--from", "now", "--until", "+1h")  # fmt: skip
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "exists; not overwritten" in again.stderr
    forced = _kommune(tmp_path, "token", "issue", "--lock", "1017", "--holder", "4242",
                      "--from", "now", "--until", "+1h", "--force")  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert tokenfile.read(path).token_id != token.token_id
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "soon", "--until", "+1h"], "'soon' is not a time"),
        (["--from", "+2h", "--until", "+1h"], "empty window"),
        (["--from", "now", "--until", "+8d"], "exceeds the 604800 s limit"),
        (["--from", "now", "--until", "+1h", "--rights", "fly"], "unknown right 'fly'"),
    ],
)
def test_issue_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _kommune(tmp_path, "token", "issue", "--lock", "1", "--holder", "2", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "token-1-2.json").exists()


def test_revoke_token_and_all_persist(tmp_path: Path) -> None:
    issue = _kommune(tmp_path, "token", "issue", "--lock", "5", "--holder", "6",
                     "--from", "now", "--until", "+1h", "--json")  # fmt: skip
    token_id = json.loads(issue.stdout)["token_id"]
    one = _kommune(tmp_path, "token", "revoke", "--lock", "5", "--token", str(token_id), "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["deny_list"]["tokens"] == [token_id]
    assert json.loads(one.stdout)["known"] is True
    every = _kommune(tmp_path, "token", "revoke", "--lock", "5", "--all")
    assert every.returncode == 0 and "epoch now 1" in every.stdout
    with KeyStore.open(tmp_path / "ks") as store:
        assert store.epoch(5) == 1
    # A token issued now carries the new epoch.
    later = _kommune(tmp_path, "token", "issue", "--lock", "5", "--holder", "6", "--out",
                     "b.json", "--from", "now", "--until", "+1h", "--json")  # fmt: skip
    assert json.loads(later.stdout)["epoch"] == 1
    neither = _kommune(tmp_path, "token", "revoke", "--lock", "5")
    assert neither.returncode == 2 and neither.stderr.count("\n") == 1


def test_keystore_readable_by_others_is_refused(tmp_path: Path) -> None:
    assert _kommune(tmp_path, "token", "revoke", "--lock", "1", "--all").returncode == 0
    os.chmod(tmp_path / "ks", 0o755)
    proc = _kommune(tmp_path, "token", "revoke", "--lock", "1", "--all")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "mode 0755 lets group or others in; refused (chmod 700" in proc.stderr


@pytest.mark.parametrize(
    ("window", "message"),
    [(("+1h", "+2h"), "token not valid until "), (("-2h", "-1h"), "token expired at ")],
)
def test_unlock_checks_the_window_before_any_radio(
    tmp_path: Path, window: tuple[str, str], message: str
) -> None:
    issue = _kommune(tmp_path, "token", "issue", "--lock", "3", "--holder", "4",
                     f"--from={window[0]}", f"--until={window[1]}")  # fmt: skip
    assert issue.returncode == 0, issue.stderr
    # No BLE transport at all: the refusal comes before the radio is touched.
    proc = _kommune(tmp_path, "unlock", "3", "--token", "token-3-4.json")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith(f"kommune unlock: error: {message}")
    assert proc.stderr.count("\n") == 1


def test_unlock_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    _kommune(tmp_path, "token", "issue", "--lock", "3", "--holder", "4",
             "--from", "now", "--until", "+1h")  # fmt: skip
    os.chmod(tmp_path / "token-3-4.json", 0o644)
    proc = _kommune(tmp_path, "unlock", "3", "--token", "token-3-4.json")
    assert proc.returncode == 2 and "lets others read the session key" in proc.stderr
    os.chmod(tmp_path / "token-3-4.json", 0o600)
    wrong = _kommune(tmp_path, "unlock", "8", "--token", "token-3-4.json")
    assert wrong.returncode == 2 and "the token is for lock 3" in wrong.stderr


def test_the_documented_example_is_a_valid_token_file() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "tokens.md").read_text()
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    token = tokenfile.TokenFile.from_json(json.loads(example))
    assert (token.lock_id, token.holder_id, token.token_id) == (1017, 4242, 0x0A0B0C0D)
    assert token.rights == RIGHT_UNLOCK | RIGHT_LOCK
    assert token.to_json() == json.loads(example)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "/dev/no-such-port", "--lock-id", "3"], "cannot open it"),
        (["--port", "socket://127.0.0.1:1", "--lock-id", "3"], "cannot open it"),
        (["--port", "/dev/null", "--lock-id", "0"], "--lock-id 0: expected 1..4294967295"),
    ],
)
def test_provision_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _kommune(tmp_path, "provision", "lock", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
