"""The rig's errors share one base, so a caller catches `RigError` and shows one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import kommune.hil
from kommune.hil.errors import RigError

#: Errors the rig raises *inside the VM* or inside the air process on purpose: wire
#: values, not failures of the rig (see kommune/hil/errors.py).
NOT_RIG_FAILURES = {"RigFault", "BleError", "ControlError"}


def _rig_modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(kommune.hil.__path__, "kommune.hil.")
        if not m.name.startswith("kommune.hil.board")  # MicroPython code, runs in the VM
    ]


def _extends_a_library_error(cls: type) -> bool:
    """A member of another library's error family (Bumble's, bleak's) on purpose."""
    return any(b.__module__.split(".")[0] not in ("builtins", "kommune") for b in cls.__mro__[1:])


def test_every_rig_error_is_a_rig_error() -> None:
    strays = []
    for name in _rig_modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if (
                cls.__module__ == name
                and issubclass(cls, Exception)
                and cls_name not in NOT_RIG_FAILURES
                and not issubclass(cls, RigError)
                and not _extends_a_library_error(cls)
            ):
                strays.append(f"{name}.{cls_name}")
    assert not strays, f"not RigError subclasses: {strays}"
