"""A door lock from the outside: what a staff phone (and `kommune unlock`) embeds.

Runs on a phone or a laptop (CPython), never on the lock. Only bleak talks BLE: its
platform backend on real hardware, the edge's Bumble backend in emulation
(`KOMMUNE_BLE_TRANSPORT`, see `kommune.edge.ble`).

    tokenfile.py   the token file `kommune token issue` writes (docs/tokens.md)
    times.py       "2026-12-01T08:00", "now", "+45m" -> site time (Unix seconds)
    finder.py      find a lock by its advertised id (or address); GATT handle cache
    session.py     one connection: scan, connect, subscribe, challenge, exchange
    errors.py      LockError and its kinds, each with the CLI's exit status
    unlock.py      `unlock(...)`: window check, connect, handshake, verified result
    edge_link.py   the edge's authenticated time set (what the lock manager will do)
"""
