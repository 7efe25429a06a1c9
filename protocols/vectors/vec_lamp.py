# Golden-vector adapter for lamp messages and the dimming curve (see runner.py).
from msgvec import decode, encode

from kommune.protocols import lamp

__all__ = ["decode", "encode", "op"]


def op(name, args):
    if name == "level_to_duty":
        return lamp.level_to_duty(args["level"])
    if name == "duty_to_level":
        return lamp.duty_to_level(args["duty"])
    raise ValueError("unknown op " + name)
