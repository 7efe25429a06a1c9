# Golden-vector adapter for node-runtime messages (see runner.py, msgvec.py).
from msgvec import decode, encode

from kommune.protocols import ota, runtime  # noqa: F401  (ota registers its messages)
from kommune.protocols.errors import ProtocolError

__all__ = ["decode", "encode", "op"]


def op(name, args):
    if name == "nack_name":
        return runtime.nack_name(args["code"])
    if name == "nack_code":
        return runtime.nack_code(ProtocolError(args["reason"]))
    raise ValueError("unknown op " + name)
