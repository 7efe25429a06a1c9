"""Fixtures of the hardware-in-the-loop rig (see kommune/hil/fixtures.py)."""

from kommune.hil.fixtures import air, board, boards, make_board, rig

__all__ = ["air", "board", "boards", "make_board", "rig"]
