"""Fixtures of the hardware-in-the-loop rig (see kommune/hil/fixtures.py)."""

from kommune.hil.fixtures import board, boards, make_board, rig

__all__ = ["board", "boards", "make_board", "rig"]
