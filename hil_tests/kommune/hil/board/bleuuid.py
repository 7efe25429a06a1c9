# bluetooth.UUID for the emulated board (re-exported by bluetooth.py).
#
# 16-, 32- or 128-bit; stored little-endian as in MicroPython, and like
# MicroPython's, bytes(uuid) gives those bytes (here through iteration), the
# repr and the constructor's string are big-endian.


class UUID:
    def __init__(self, value: object) -> None:
        if isinstance(value, UUID):
            data = value._data
        elif isinstance(value, int):
            if 0 <= value <= 0xFFFF:
                data = value.to_bytes(2, "little")
            elif 0 <= value <= 0xFFFFFFFF:
                data = value.to_bytes(4, "little")
            else:
                raise ValueError("invalid UUID")
        elif isinstance(value, str):
            digits = value.replace("-", "")
            if len(digits) not in (4, 8, 32):
                raise ValueError("invalid UUID")
            data = bytes(reversed(bytes.fromhex(digits)))
        else:
            data = bytes(value)  # type: ignore[call-overload]
            if len(data) not in (2, 4, 16):
                raise ValueError("invalid UUID")
        self._data: bytes = data

    def __iter__(self) -> object:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UUID) and other._data == self._data

    def __hash__(self) -> int:
        return hash(self._data)

    def _wire(self) -> object:
        # JSON for the rig: an int (16/32-bit) or the canonical 128-bit string.
        if len(self._data) < 16:
            return int.from_bytes(self._data, "little")
        h = bytes(reversed(self._data)).hex()
        return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])

    def __repr__(self) -> str:
        wire = self._wire()
        if isinstance(wire, int):
            return "UUID(0x%04x)" % wire
        return "UUID('%s')" % wire


def wire(value: object) -> object:
    """A definition's UUID for the rig (UUID objects only, as MicroPython takes)."""
    if not isinstance(value, UUID):
        raise ValueError("invalid UUID")
    return value._wire()


def raw(value: object) -> bytes:
    """An optional UUID argument as the rig's len:u8 + bytes (b"\\x00": None)."""
    if value is None:
        return b"\x00"
    if not isinstance(value, UUID):
        raise TypeError("UUID")
    return bytes((len(value._data),)) + value._data
