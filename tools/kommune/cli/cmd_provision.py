"""`kommune provision lock|time`: identity and keys over the console; the clock over BLE."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from kommune.cli.cmd_token import add_keystore_option, open_keystore
from kommune.cli.errors import CliError

if TYPE_CHECKING:
    from mpremote.transport_serial import SerialTransport

EPILOG = """examples:
  kommune provision lock --port /dev/ttyUSB0 --lock-id 1017
      write /lock/identity.json (lock id, site id, the lock's three keys derived from
      the site key) over the board's console, then reset it
  kommune provision lock --port socket://10.0.0.7:2217 --lock-id 1017 --force
      a lock that has an identity already: new keys, and a new audit chain
  KOMMUNE_BLE_TRANSPORT=usb:0 kommune provision time --lock 1017
      set the lock's clock over BLE with its edge key (a new lock serves nobody until
      then; later the edge's lock manager keeps it right)

--port: a device path or any pyserial URL (socket://, rfc2217://). The key store:
--keystore DIR, else $KOMMUNE_KEYSTORE, else ~/.local/share/kommune/keystore
(/var/lib/kommune/keystore as root). Walk-through: docs/locks.md.
"""

IDENTITY = "/lock/identity.json"
#: What a new identity makes obsolete (firmware/lock/README.md): the old chain's files.
OLD_CHAIN = ("/lock/state.bin", "/lock/audit.bin")
READY_TIMEOUT_S = 20.0
_SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary + ". Only the lock's own derived keys leave the key store, never"
        " the site key.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nodes = p.add_subparsers(dest="node", metavar="WHAT", title="what", required=True)
    lock = nodes.add_parser(
        "lock",
        help="write a lock's identity and keys over its console (raw REPL), then reset it",
        description="Write /lock/identity.json over the board's raw REPL and reset the board.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lock.add_argument("--port", required=True, help="the console: a device or a pyserial URL")
    lock.add_argument("--lock-id", type=int, required=True, metavar="N", help="1..4294967295")
    lock.add_argument("--site", metavar="ID", help="site id (default: the key store's)")
    lock.add_argument(
        "--force",
        action="store_true",
        help="replace an identity the lock has (its state and audit log go too)",
    )
    lock.add_argument("--json", action="store_true", help="print what was done as JSON")
    add_keystore_option(lock)
    lock.set_defaults(run=run_lock)

    clock = nodes.add_parser(
        "time",
        help="set a lock's clock over BLE with its edge key",
        description="Set the lock's clock to this machine's time, over BLE (bleak; "
        "KOMMUNE_BLE_TRANSPORT for an HCI transport).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clock.add_argument("--lock", type=int, required=True, metavar="ID", help="the lock's id")
    clock.add_argument("--address", metavar="AA:BB:..", help="connect here, no scan for the id")
    clock.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="find + connect (10)"
    )
    clock.add_argument("--json", action="store_true", help="print the result as JSON")
    add_keystore_option(clock)
    clock.set_defaults(run=run_time)


# -- over the console -----------------------------------------------------------------

_PROBE = """
import os, json
def _has(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
_id = None
if _has(%(identity)r):
    try:
        with open(%(identity)r) as f:
            _id = json.load(f).get("lock_id", "?")
    except Exception:
        _id = "unreadable"
print(json.dumps({"identity": _has(%(identity)r), "lock_id": _id}))
"""

_WRITE = """
import os, hashlib, binascii
for _p in %(remove)r:
    try:
        os.remove(_p)
    except OSError:
        pass
try:
    os.mkdir("/lock")
except OSError:
    pass
with open(%(tmp)r, "w") as f:
    f.write(%(data)r)
os.rename(%(tmp)r, %(identity)r)
with open(%(identity)r, "rb") as f:
    print(binascii.hexlify(hashlib.sha256(f.read()).digest()).decode())
"""


def _open_console(port: str) -> SerialTransport:
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        console = SerialTransport(port, baudrate=115200)
    except (TransportError, OSError) as e:
        raise CliError(f"--port {port}: cannot open it: {e}") from e
    # mpremote reads with blocking one-byte reads: a port timeout bounds a lost byte.
    console.serial.timeout = 1.0
    try:
        # Ctrl-C stops the running firmware; the soft reset in the raw REPL then gives a
        # clean heap without starting main.py again (a 64 KB lock's firmware fills it).
        console.enter_raw_repl(soft_reset=True)
    except (TransportError, OSError) as e:
        console.close()
        raise CliError(f"--port {port}: no MicroPython raw REPL there: {e}") from e
    return console


def _exec(console: SerialTransport, code: str, port: str) -> str:
    from mpremote.transport import TransportError

    try:
        out: bytes = console.exec(code)
    except (TransportError, OSError) as e:
        raise CliError(f"--port {port}: the board failed: {str(e).strip().splitlines()[-1]}") from e
    return out.decode(errors="replace").strip()


def _reset_and_wait(console: SerialTransport, lock_id: int | None, port: str) -> float:
    """Soft reset from the friendly REPL (main.py runs then, not after a raw-REPL reset);
    seconds until the firmware says it is ready, provisioned as `lock_id` (None: in any
    state: the firmware is running again)."""
    console.exit_raw_repl()  # Ctrl-B: the friendly REPL
    console.serial.reset_input_buffer()
    console.serial.write(b"\x04")  # Ctrl-D: soft reset
    started = time.monotonic()
    seen = b""
    while time.monotonic() - started < READY_TIMEOUT_S:
        seen += console.serial.read(max(1, console.serial.in_waiting))
        if lock_id is None and re.search(rb"lock \d+ (ready|unprovisioned)", seen):
            return time.monotonic() - started
        if lock_id is not None and f"lock {lock_id} ready".encode() in seen:
            return time.monotonic() - started
        if lock_id is not None and b"unprovisioned" in seen:
            raise CliError(f"--port {port}: the lock restarted unprovisioned; identity refused")
    lines = [ln for ln in seen.decode(errors="replace").splitlines() if ln.strip()]
    last = f"; its last words: {lines[-1].strip()[:120]!r}" if lines else "; it printed nothing"
    raise CliError(
        f"--port {port}: the lock did not report 'lock {lock_id or 'N'} ready' within "
        f"{READY_TIMEOUT_S:g} s after its reset{last}"
    )


def run_lock(args: argparse.Namespace) -> int:
    from kommune.edge.keystore import KeyStoreError

    if not 1 <= args.lock_id <= 0xFFFF_FFFF:
        raise CliError(f"--lock-id {args.lock_id}: expected 1..4294967295")
    if args.site is not None and not _SITE_ID.fullmatch(args.site):
        raise CliError(f"--site {args.site!r}: letters, digits, '.', '_', '-' (up to 63)")
    with open_keystore(args) as store:
        try:
            site_id = args.site or store.site_id()
            if args.site and not store.site_id():
                store.set_site_id(args.site)
            lock_keys = store.lock_keys(args.lock_id)
        except KeyStoreError as e:
            raise CliError(f"key store: {e}") from e
    doc = {
        "version": 1,
        "lock_id": args.lock_id,
        "site_id": site_id,
        "token_key": lock_keys.token_key.hex(),
        "edge_key": lock_keys.edge_key.hex(),
        "audit_key": lock_keys.audit_key.hex(),
    }
    data = json.dumps(doc)
    console = _open_console(args.port)
    try:
        probe = json.loads(_exec(console, _PROBE % {"identity": IDENTITY}, args.port))
        if probe["identity"] and not args.force:
            _reset_and_wait(console, None, args.port)  # its firmware runs again, untouched
            raise CliError(
                f"--port {args.port}: the lock is provisioned already (lock id "
                f"{probe['lock_id']}); --force replaces its identity, state and audit log"
            )
        remove = list(OLD_CHAIN) if probe["identity"] else []
        code = _WRITE % {
            "remove": remove,
            "tmp": IDENTITY + ".tmp",
            "identity": IDENTITY,
            "data": data,
        }
        import hashlib

        written = _exec(console, code, args.port)
        if written != hashlib.sha256(data.encode()).hexdigest():
            raise CliError(f"--port {args.port}: {IDENTITY} read back differs from what was sent")
        ready_s = _reset_and_wait(console, args.lock_id, args.port)
    finally:
        console.close()
    result = {
        "port": args.port,
        "lock_id": args.lock_id,
        "site_id": site_id,
        "identity": IDENTITY,
        "replaced": bool(probe["identity"]),
        "previous_lock_id": probe["lock_id"],
        "removed": remove,
        "reset": True,
        "ready_s": round(ready_s, 3),
        "needs_time": True,
    }
    if args.json:
        print(json.dumps(result))
    else:
        what = "re-provisioned" if result["replaced"] else "provisioned"
        print(f"lock {args.lock_id} {what} on {args.port}: {IDENTITY} written and read back")
        if remove:
            print(f"  removed {', '.join(remove)} (a new audit chain begins)")
        print(f"  reset; the firmware reported ready after {ready_s:.1f} s")
        print(
            "  its clock is not set: it serves nobody until "
            f"'kommune provision time --lock {args.lock_id}' (or the edge) sets it"
        )
    return 0


# -- over BLE -------------------------------------------------------------------------


def run_time(args: argparse.Namespace) -> int:
    import asyncio

    from kommune.edge.keystore import KeyStoreError
    from kommune.edge.lock.edge_link import set_time
    from kommune.edge.lock.errors import LockError
    from kommune.edge.lock.finder import LockCache

    with open_keystore(args) as store:
        try:
            lock_keys = store.lock_keys(args.lock)
        except KeyStoreError as e:
            raise CliError(f"key store: {e}") from e
    try:
        result = asyncio.run(
            set_time(lock_keys, address=args.address, timeout_s=args.timeout, cache=LockCache())
        )
    except LockError as e:
        err = CliError(str(e))
        err.exit_code = e.exit_code
        raise err from e
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"lock {args.lock}: clock set to {result['time_s']} (it was "
            f"{result['lock_clock_s']}, {result['lock_clock_s'] - result['time_s']:+d} s)"
        )
    sys.stdout.flush()
    return 0
