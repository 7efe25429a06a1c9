"""Start one board's MicroPython VM (run as a script: `python vmlaunch.py ARGS...`).

The supervisor starts this in a new session with stdin/stdout on the VM's own
pty. Claiming that pty as the controlling terminal makes a Ctrl-C byte raise
SIGINT in the VM while it runs code (the unix port's KeyboardInterrupt), as a
board's UART driver does. The VM dies with its supervisor (PR_SET_PDEATHSIG;
and if the supervisor died before that was set, the launcher exits at once).
ARGS are the `micropython` command's own.
"""

import ctypes
import fcntl
import importlib
import os
import signal
import sys
import termios

_PR_SET_PDEATHSIG = 1
_PARENT_PID_ENV = "KOMMUNE_RIG_PID"  # vmprocess.PARENT_PID_ENV (not imported: start fast)


def main() -> int:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.environ.get(_PARENT_PID_ENV)
    if parent is not None and os.getppid() != int(parent):
        return 1  # the supervisor is gone already
    unix_port = importlib.import_module("micropython_run")  # a CPython extension module
    code: int = unix_port.run_main(["micropython", *sys.argv[1:]])
    return code


if __name__ == "__main__":
    sys.exit(main())
