"""One error type for talking to a lock; each carries the CLI's exit status.

1  refused by the lock (its authenticated RESULT, or an unauthenticated NOTICE)
3  the token is not valid now (checked locally, before any radio)
4  not reached: not in range, the connection failed, the link dropped before the
   request went out (retried first), no BLE transport
5  outcome unknown: the request went out and no answer came (never retried: the
   door may have opened)
"""

from __future__ import annotations


class LockError(Exception):
    """Talking to a lock failed; the message is one line for a person."""

    exit_code = 4


class Refused(LockError):
    """The lock answered, and not with an opening."""

    exit_code = 1

    def __init__(self, message: str, reason: str, authenticated: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.authenticated = authenticated


class NotValidNow(LockError):
    """The token's window does not include now (checked before connecting)."""

    exit_code = 3


class NotReached(LockError):
    """The lock was not found, or no link to it held long enough to send the request."""

    exit_code = 4


class OutcomeUnknown(LockError):
    """The request was sent and no answer came back: the door may or may not be open."""

    exit_code = 5
