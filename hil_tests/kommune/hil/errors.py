"""The rig's one error base: whatever the rig refuses or fails to do is a `RigError`.

Callers that drive the rig (`kommune emulate`, `kommune bench`, tests) catch this one
type and show its first line. The kinds say which part failed:

    RigError
    ├── FlashError          a flash image: unreadable, not a filesystem, in use, ...
    ├── BoardProfileError   firmware/boards/*.json: unknown board, malformed profile
    ├── FirmwareError       no such node, or no firmware for it yet
    ├── VMSetupError        the VM's tools are missing (micropython, mpy-cross)
    ├── VMError             a one-off VM run (vectors, benches) did not run
    ├── BoardError          a board did not boot, or cannot do what was asked
    ├── AirError            the virtual air did not start, died, or refused a request
    └── LinkProfileError    a radio link setting out of range

Not rig failures, so not here: `RigFault` and the GATT model's `BleError` are errors the
rig raises *inside the VM* (as OSError/ValueError), on purpose.
"""

from __future__ import annotations


class RigError(Exception):
    """The rig refused or failed to do something; the message says what, in one line."""
