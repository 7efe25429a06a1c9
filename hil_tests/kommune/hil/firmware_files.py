"""Which files a node's firmware puts on a board's flash (a source install).

    firmware/NODE/**               -> /            (main.py, boot.py, the app)
    firmware/common/**             -> /lib/common/ (the shared node runtime)
    protocols/kommune/protocols/** -> /lib/kommune/protocols/

`compiled(files)` turns every module but main.py and boot.py into .mpy, as a firmware
bundle ships them: no parsing at boot, and the heap a 64 KB lock needs (its sources
alone do not fit).

`/lib` is on a board's sys.path, so the firmware imports `common.*` and
`kommune.protocols.*` on the board as it does in the source tree. An installed
wheel carries the same files (firmware/ as `kommune.firmware`; see paths.py).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Mapping
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


#: Kept as source in a bundle: what the board runs by name at boot.
ENTRY_POINTS = frozenset({"/main.py", "/boot.py"})


def compiled(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """`files` with every module but ENTRY_POINTS compiled by mpy-cross (`/x.py` becomes
    `/x.mpy`, its source name kept for tracebacks); FirmwareError naming the module if
    one does not compile."""
    from kommune.hil.vmprocess import mpy_cross

    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="kommune-mpy-") as tmp:
        for i, (path, source) in enumerate(sorted(files.items())):
            if not path.endswith(".py") or path in ENTRY_POINTS:
                out[path] = source
                continue
            src, dest = Path(tmp) / f"{i}.py", Path(tmp) / f"{i}.mpy"
            src.write_bytes(source)
            proc = subprocess.run(
                [mpy_cross(), "-s", path.lstrip("/"), "-o", str(dest), str(src)],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines() or ["failed"]
                raise FirmwareError(f"mpy-cross {path}: {lines[-1]}")
            out[path[:-3] + ".mpy"] = dest.read_bytes()
    return out


def bundle(
    node: str, *, common: Iterable[str] | None = None, protocols: Iterable[str] | None = None
) -> dict[str, bytes]:
    """`node`'s firmware as a bundle (`compiled`), shipping only the `common` and
    `protocols` modules named (module names without .py; None: all of them), as a board
    with little flash and heap gets it."""
    keep = {
        "/lib/common/": None if common is None else set(common),
        "/lib/kommune/protocols/": None if protocols is None else set(protocols),
    }
    files: dict[str, bytes] = {}
    for path, content in node_files(node).items():
        for prefix, names in keep.items():
            if path.startswith(prefix):
                if names is None or path[len(prefix) : -3] in names:
                    files[path] = content
                break
        else:
            files[path] = content
    return compiled(files)
