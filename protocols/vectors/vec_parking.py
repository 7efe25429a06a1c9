# Golden-vector adapter for parking messages (see runner.py, msgvec.py).
from msgvec import decode, encode

from kommune.protocols import parking  # noqa: F401  (registers the parking messages)

__all__ = ["decode", "encode"]
