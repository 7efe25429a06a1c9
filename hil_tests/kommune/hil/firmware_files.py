"""Which files a node's firmware puts on a board's flash (a source install).

    firmware/NODE/**               -> /            (main.py, boot.py, the app)
    firmware/common/**             -> /lib/common/ (the shared node runtime)
    protocols/kommune/protocols/** -> /lib/kommune/protocols/

`/lib` is on a board's sys.path, so the firmware imports `common.*` and
`kommune.protocols.*` on the board as it does in the source tree. An installed
wheel carries the same files (firmware/ as `kommune.firmware`; see paths.py).
"""

from __future__ import annotations

from pathlib import Path

from kommune.hil.errors import RigError
from kommune.hil.paths import FIRMWARE_ROOT, PROTOCOLS_PACKAGE

NOT_NODES = frozenset({"common", "boards"})


class FirmwareError(RigError, ValueError):
    """No such node, or no firmware for it yet."""


def nodes() -> list[str]:
    """The node kinds with a firmware folder (lock, lamp, parking, ...)."""
    return sorted(
        p.name
        for p in FIRMWARE_ROOT.iterdir()
        if p.is_dir() and p.name not in NOT_NODES and not p.name.startswith((".", "_"))
    )


def _tree(root: Path, prefix: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if not root.is_dir():
        return files
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        files[prefix + path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def node_files(node: str) -> dict[str, bytes]:
    """Board path -> content for `node`'s firmware."""
    known = nodes()
    if node not in known:
        raise FirmwareError(f"unknown node {node!r} (known: {', '.join(known) or 'none'})")
    app = _tree(FIRMWARE_ROOT / node, "/")
    if "/main.py" not in app:
        raise FirmwareError(f"firmware/{node} has no main.py yet; use --blank for an empty board")
    return {**app, **_tree(FIRMWARE_ROOT / "common", "/lib/common/"), **protocol_files()}


def protocol_files() -> dict[str, bytes]:
    """Board path -> content for the shared wire protocols (`kommune.protocols`)."""
    return _tree(PROTOCOLS_PACKAGE, "/lib/kommune/protocols/")
