# CRC-16/CCITT-FALSE (also catalogued as CRC-16/IBM-3740): poly 0x1021, init
# 0xFFFF, no reflection, no final xor. check("123456789") == 0x29B1.
#
# Table-free byte-at-a-time form (nibble folding), so it costs no RAM and,
# working on small ints and indexes only, allocates nothing on MicroPython.

INIT = 0xFFFF


def crc16(
    data: bytes | bytearray | memoryview, start: int = 0, end: int = -1, crc: int = INIT
) -> int:
    # CRC of data[start:end] (end < 0: to the end), continuing from `crc`.
    if end < 0:
        end = len(data)
    for i in range(start, end):
        x = ((crc >> 8) ^ data[i]) & 0xFF
        x ^= x >> 4
        crc = ((crc << 8) ^ (x << 12) ^ (x << 5) ^ x) & 0xFFFF
    return crc
