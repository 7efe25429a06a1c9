"""Work directories: held while their process lives, removed once it is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kommune.hil import workdirs

# A process that makes a work directory in TMPDIR, says where, and waits.
OWNER = """
import sys
from kommune.hil.workdirs import make_workdir
print(make_workdir("kommune-rig-"), flush=True)
sys.stdin.read()
"""


def _owner(tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"TMPDIR": str(tmp), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_clean_stale_removes_only_what_a_dead_process_left(tmp_path: Path) -> None:
    alive, alive_dir = _owner(tmp_path)
    dead, dead_dir = _owner(tmp_path)
    try:
        dead.kill()  # SIGKILL: no cleanup of its own
        dead.communicate()
        foreign = tmp_path / "kommune-rig-notours"  # no lock file: not made by make_workdir
        foreign.mkdir()
        (dead_dir / "rig.sock").touch()
        assert alive_dir.parent == tmp_path and dead_dir.is_dir()
        assert (alive_dir / workdirs.LOCK_NAME).read_text() == f"{alive.pid}\n"

        assert workdirs.clean_stale(tmp_path) == [dead_dir]
        assert alive_dir.is_dir() and foreign.is_dir() and not dead_dir.exists()
    finally:
        alive.communicate("", timeout=10)
    assert workdirs.clean_stale(tmp_path) == [alive_dir]  # it ended without removing it
