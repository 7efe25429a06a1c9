"""`kommune downlink keygen|sign`: a key pair an agent can use, envelopes it accepts,
and every mistake one line with exit status 2."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kommune.edge.downlink.envelope import Verifier
from kommune.edge.downlink.keys import load_private, load_public

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


def _kommune(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [KOMMUNE, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    proc = _kommune("downlink", "keygen", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    return tmp_path


def test_keygen_writes_a_private_key_only_its_owner_reads_and_its_public_key(keys: Path) -> None:
    private, public = keys / "downlink-signing.key", keys / "downlink-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_private(private).public_key() == load_public(public)


def test_keygen_never_overwrites_a_key(keys: Path) -> None:
    before = (keys / "downlink-signing.key").read_bytes()
    proc = _kommune("downlink", "keygen", "--out", str(keys))
    assert proc.returncode == 2
    assert proc.stderr.decode().count("\n") == 1
    assert b"not overwritten" in proc.stderr
    assert (keys / "downlink-signing.key").read_bytes() == before


def test_keygen_makes_a_missing_folder_for_its_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "srv" / "keys"
    proc = _kommune("downlink", "keygen", "--out", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "downlink-signing.key").is_file()


def test_keygen_refuses_a_file_as_its_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    proc = _kommune("downlink", "keygen", "--out", str(tmp_path / "f"))
    assert proc.returncode == 2
    assert (
        proc.stderr.decode() == f"kommune downlink: error: --out {tmp_path / 'f'}: not a folder\n"
    )


def test_sign_writes_an_envelope_the_agent_accepts(keys: Path) -> None:
    body = keys / "deny.json"
    body.write_text(json.dumps({"holders": ["h-17"], "epoch": 4}))
    args = ["--site", "nordby", "--agent", "*", "--kind", "deny-list", "--seq", "42"]
    before = time.time_ns() // 1_000_000
    proc = _kommune(
        "downlink", "sign", "--key", str(keys / "downlink-signing.key"), *args,
        "--body", str(body), "--ttl", "60",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    verifier = Verifier(
        load_public(keys / "downlink-signing.pub"), "nordby", "edge-1", max_age_ms=60_000
    )
    dl = verifier.check(proc.stdout, time.time_ns() // 1_000_000, topic_kind="deny-list")
    assert (dl.kind, dl.site, dl.agent, dl.seq) == ("deny-list", "nordby", "*", 42)
    assert dl.body == {"holders": ["h-17"], "epoch": 4}
    assert before <= dl.issued_ms and dl.expires_ms == dl.issued_ms + 60_000
    # The body from stdin, the envelope to a file.
    out = keys / "deny.cbor"
    again = _kommune(
        "downlink", "sign", "--key", str(keys / "downlink-signing.key"), *args,
        "--body", "-", "--out", str(out), stdin=b'{"holders": []}',
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert verifier.check(out.read_bytes(), time.time_ns() // 1_000_000).body == {"holders": []}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"--key": "missing.key"}, "missing.key: no such file"),
        ({"--key": "downlink-signing.pub"}, "not an unencrypted PEM private key"),
        ({"--body": "list.json"}, "expected a JSON object, got list"),
        ({"--body": "bad.json"}, "not JSON"),
        ({"--site": "Nordby"}, "--site 'Nordby': expected a name"),
        ({"--agent": "edge 1"}, "--agent 'edge 1': expected an agent id or '*'"),
        ({"--seq": "0"}, "--seq 0: expected 1.."),
        ({"--ttl": "0"}, "--ttl 0: expected a number of seconds > 0"),
        ({"--kind": "reboot"}, "invalid choice: 'reboot'"),
    ],
)
def test_sign_mistakes_are_one_line(keys: Path, change: dict[str, str], words: str) -> None:
    (keys / "list.json").write_text("[1, 2]")
    (keys / "bad.json").write_text("{nope")
    (keys / "good.json").write_text("{}")
    options = {
        "--key": "downlink-signing.key",
        "--site": "nordby",
        "--agent": "edge-1",
        "--kind": "config",
        "--seq": "1",
        "--body": "good.json",
        "--ttl": "10",
    }
    options.update(change)
    for name in ("--key", "--body"):
        options[name] = str(keys / options[name])
    argv = [item for pair in options.items() for item in pair]
    proc = _kommune("downlink", "sign", *argv)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and words in err, err
