"""protocols/README.md documents the exact bytes: its tables must match the code."""

from __future__ import annotations

import re

import pytest
from wire_strategies import LAMP, PARKING, RUNTIME

from kommune.hil.paths import PROTOCOLS_ROOT
from kommune.protocols import frame, lamp, runtime
from kommune.protocols.message import BLOB, RAW, TAIL, U16_LIST, Message, encode_frame

README = (PROTOCOLS_ROOT / "README.md").read_text()
ALL = LAMP + PARKING + RUNTIME


def table_after(heading: str) -> list[list[str]]:
    """Rows (cells stripped, header and rule dropped) of the first table after a heading."""
    start = README.index(heading + "\n")
    rows: list[list[str]] = []
    for line in README[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def documented_layout(cls: type[Message]) -> list[tuple[str, str, str]]:
    """(offset, size, field) rows as the README must show them."""
    rows: list[tuple[str, str, str]] = []
    offset = 0
    for name, kind, lo, hi in cls._LAYOUT:
        if kind == BLOB:
            rows += [(str(offset), "1", name + "_len"), (str(offset + 1), "n", name)]
        elif kind == TAIL:
            rows.append((str(offset), f"{lo}..{hi}", name))
        elif kind == U16_LIST:
            rows.append((str(offset), f"2*({lo}..{hi})", name))
        else:
            size = hi if kind == RAW else abs(kind)
            rows.append((str(offset), str(size), name))
            offset += size
    return rows


@pytest.mark.parametrize("cls", ALL, ids=[c.__name__ for c in ALL])
def test_message_table_matches_the_layout(cls: type[Message]) -> None:
    rows = table_after(f"### 0x{cls.TYPE:02X} {cls.__name__}")
    assert [tuple(r[:3]) for r in rows] == documented_layout(cls)


def test_type_registry_table_lists_every_message() -> None:
    rows = table_after("### Type registry")
    assert [(int(r[0], 16), r[1]) for r in rows] == [
        (c.TYPE, c.__name__) for c in sorted(ALL, key=lambda c: c.TYPE)
    ]


def test_nack_code_table_matches_nack_name() -> None:
    rows = table_after("### Nack codes")
    codes = {v for k, v in vars(runtime).items() if k.startswith("NACK_")}
    assert {int(r[0], 16) for r in rows} == codes
    for r in rows:
        assert r[1] == f"`{runtime.nack_name(int(r[0], 16))}`"


def test_worked_example_is_the_real_encoding() -> None:
    wire = encode_frame(
        lamp.SetLevel(level=200, fade_ms=1500), dst=0x0012, seq=7, flags=frame.FLAG_ACK_REQUESTED
    )
    shown = re.search(r"^wire  ([0-9a-f ]+)$", README, re.MULTILINE)
    assert shown is not None and bytes.fromhex(shown.group(1)) == wire


def test_header_table_matches_the_constants() -> None:
    rows = table_after("### Raw frame (before COBS)")
    assert [r[2] for r in rows] == [
        "version",
        "flags",
        "src",
        "dst",
        "seq",
        "type",
        "len",
        "payload",
        "crc",
    ]
    assert rows[-3][0] == str(frame.HEADER_SIZE - 1) and rows[-2][0] == str(frame.HEADER_SIZE)
