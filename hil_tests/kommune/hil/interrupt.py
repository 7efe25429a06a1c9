"""Ctrl-C for a VM: a KeyboardInterrupt exactly when MicroPython would raise one.

On a board, the UART driver compares each received byte with the interrupt
character; MicroPython sets that character to Ctrl-C while it executes code
(a REPL line, a raw-REPL or raw-paste program, boot.py, main.py) and clears it
at the prompt or after `micropython.kbd_intr(-1)`. The unix port does the same
with its SIGINT handler: installed while the interrupt character is Ctrl-C,
the default action (terminate) otherwise. So "would this Ctrl-C interrupt?" is
"does the VM catch SIGINT now?", which /proc tells.

Reading that and then sending the signal is a race: the program may end in
between, the port restores the default action, and our SIGINT kills the VM (a
board that reboots on Ctrl-C). So the VM is stopped while we look: a stopped
process cannot change its signal actions, and a SIGINT sent then is handled
with the action we saw once it continues.
"""

from __future__ import annotations

import contextlib
import os
import signal


def interrupt_if_catching(pid: int) -> bool:
    """Raise KeyboardInterrupt in VM `pid` if it takes Ctrl-C as an interrupt now.

    Returns False (the byte is data, as on a board) if the VM is at its prompt,
    has disabled the interrupt character, or is gone. The caller must be the
    VM's parent (it waits for the stop), and nobody else may stop the VM.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    try:
        # Returns once the VM is stopped (or has exited); WNOWAIT leaves its
        # exit status for the supervisor, which reaps it.
        status = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
        if status is None or status.si_code != os.CLD_STOPPED:
            return False
        catching = catches_sigint(pid)
        if catching:
            os.kill(pid, signal.SIGINT)  # pending until SIGCONT, then handled
        return catching
    except ChildProcessError:
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def catches_sigint(pid: int) -> bool:
    """Whether process `pid` has a handler installed for SIGINT (its SigCgt mask)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False
