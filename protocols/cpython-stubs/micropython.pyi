# What CPython type-checking needs of MicroPython's `micropython` module: the
# protocol modules import const() from it, with a fallback when it is absent.
from typing import TypeVar

_T = TypeVar("_T")

def const(expr: _T, /) -> _T: ...
