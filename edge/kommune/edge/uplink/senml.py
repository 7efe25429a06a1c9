"""Batches of queued events as SenML packs (RFC 8428) in CBOR, and back.

One pack carries the rows of one batch, from one stream or several. The profile:

* Labels are RFC 8428's integer CBOR labels (bn -2, bt -3, bu -4, bv -5, bver -1, n 0,
  u 1, v 2, vs 3, vb 4, s 5, t 6, ut 7, vd 8) plus two extension labels. RFC 8428
  gives labels registered after it no CBOR integer, so ours are text strings; both
  start with "b" (base fields: they hold for their record and every later one) and
  end with "_" (must understand: a SenML reader that does not know them rejects the
  pack instead of misreading it):

  - ``"btres_"``: the resolution of ``t``, a power of ten in seconds. We write -3: every
    ``t`` is an integer count of milliseconds after ``bt``. Without it ``t`` is in
    seconds, as RFC 8428 has it.
  - ``"bseq_"``: the per-stream sequence number (`Queued.seq`) of its record. A record
    without one has the previous record's sequence number plus one, so a run of
    consecutive rows carries it once.

* Resolved names are ``agent/stream/name`` ("edge-1/bay-17/occupancy/occupied"): the
  agent has no "/", the stream exactly one, the record name is the rest. With the
  sequence number they form the idempotency key (agent, stream, seq).
* ``bt`` is whole Unix seconds (an integer, the batch's earliest second); ``t`` is
  integer milliseconds after it, left out when 0. Millisecond times survive exactly.
* Records are grouped by stream (rows of one stream keep their order). A stream whose
  rows all have one record name gets ``bn = "agent/stream/name"`` and no ``n``; other
  streams get ``bn = "agent/stream/"`` and an ``n`` per record.
* Units: a stream with one unit sets ``bu`` once; a record whose unit differs from the
  current ``bu`` carries ``u``. Streams with unit-less rows come first, before any
  ``bu`` is set (SenML has no way to clear ``bu``).
* Values: booleans ``vb``, numbers ``v`` (floats in the shortest CBOR float that keeps
  them exactly), text ``vs``, bytes ``vd``.

A pack may be deflated whole (raw deflate, RFC 1951, no zlib header); the carrier
says so (the MQTT uplink sets a content-encoding user property).

`decode` is total: any bytes give records or raise `SenmlError`, nothing else.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import cbor2

from kommune.edge.northbound import STREAM_PATTERN, Queued, Value

BVER, BN, BT, BU, BV, BS = -1, -2, -3, -4, -5, -6
N, U, V, VS, VB, S, T, UT, VD = 0, 1, 2, 3, 4, 5, 6, 7, 8
BSEQ = "bseq_"
BTRES = "btres_"

#: What we write in btres_: t counts milliseconds.
MILLISECONDS = -3
#: The SenML version this reader understands (RFC 8428's default).
SENML_VERSION = 10
#: An inflated pack larger than this is refused (a deflate bomb, not a batch).
MAX_INFLATED_BYTES = 16 * 1024 * 1024

#: An agent's id: it is also an MQTT topic level, so no "/", "+" or "#".
AGENT_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: RFC 8428 section 4.5.1: the characters of a resolved name.
_NAME_CHARS = re.compile(r"[A-Za-z0-9\-:./_]+")

_VALUE_LABELS = (V, VS, VB, VD)


class SenmlError(ValueError):
    """A pack that is not SenML of this profile, or an event that cannot be one."""


class Record(NamedTuple):
    """One decoded record: its idempotency key (agent, stream, seq) and its reading."""

    agent: str
    stream: str
    seq: int
    time_ms: int
    name: str
    value: Value
    unit: str | None


# -- encoding ------------------------------------------------------------------------


def check_agent(agent: str) -> str:
    """`agent`, if it can be the first part of a resolved name (and a topic level)."""
    if not AGENT_PATTERN.fullmatch(agent):
        raise SenmlError(f"agent id {agent!r} is not [a-z0-9][a-z0-9-]{{0,62}}")
    return agent


def check_row(row: Queued) -> None:
    """Raise `SenmlError` if `row` cannot go into a pack (the outbox can call this at
    ingest, so that a producer learns at once instead of the row sitting unsent)."""
    event = row.event
    if not STREAM_PATTERN.fullmatch(event.stream):
        raise SenmlError(f"stream {event.stream!r} does not match {STREAM_PATTERN.pattern}")
    if not _NAME_CHARS.fullmatch(event.name):
        raise SenmlError(f"record name {event.name!r} is empty or has characters SenML forbids")
    if not isinstance(row.seq, int) or isinstance(row.seq, bool) or row.seq < 0:
        raise SenmlError(f"seq {row.seq!r} is not a non-negative integer")
    if not isinstance(event.time_ms, int) or isinstance(event.time_ms, bool):
        raise SenmlError(f"time_ms {event.time_ms!r} is not an integer")
    if event.unit is not None and not isinstance(event.unit, str):
        raise SenmlError(f"unit {event.unit!r} is not text")
    if not isinstance(event.value, float | int | bool | str | bytes):
        raise SenmlError(f"value {event.value!r} is not a number, boolean, text or bytes")


class _Float:
    """A float to be written in the shortest CBOR float that holds it exactly (cbor2
    writes every float as 64 bits unless asked for canonical output, which costs 4x)."""

    __slots__ = ("raw",)

    def __init__(self, x: float) -> None:
        for head, fmt in ((b"\xf9", ">e"), (b"\xfa", ">f")):
            try:
                packed = struct.pack(fmt, x)
            except OverflowError:
                continue
            back = struct.unpack(fmt, packed)[0]
            if back == x or (math.isnan(x) and math.isnan(back)):
                self.raw = head + packed
                return
        self.raw = b"\xfb" + struct.pack(">d", x)


def _write_float(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if not isinstance(value, _Float):
        raise SenmlError(f"cannot encode {type(value).__name__}")
    encoder.write(value.raw)


def _value_field(value: Value) -> tuple[int, Any]:
    if isinstance(value, bool):
        return VB, value
    if isinstance(value, int):
        return V, value
    if isinstance(value, float):
        return V, _Float(value)
    if isinstance(value, str):
        return VS, value
    return VD, bytes(value)


def encode(agent: str, rows: Sequence[Queued]) -> bytes:
    """The SenML-CBOR pack of `rows` (the module docstring says how it is laid out)."""
    check_agent(agent)
    if not rows:
        return b"\x80"
    groups: dict[str, list[Queued]] = {}
    for row in rows:
        check_row(row)
        groups.setdefault(row.event.stream, []).append(row)
    # Streams with unit-less rows first: once bu is set, no later record can be unit-less.
    ordered = sorted(groups.values(), key=lambda g: all(r.event.unit is not None for r in g))

    base_s = min(r.event.time_ms for r in rows) // 1000
    base_ms = base_s * 1000
    records: list[dict[int | str, Any]] = []
    bu: str | None = None
    next_seq: int | None = None
    for group in ordered:
        names = {r.event.name for r in group}
        units = {r.event.unit for r in group}
        one_name = len(names) == 1
        prefix = f"{agent}/{group[0].event.stream}/"
        for i, row in enumerate(group):
            event = row.event
            rec: dict[int | str, Any] = {}
            if not records:
                rec[BT] = base_s
                rec[BTRES] = MILLISECONDS
            if i == 0:
                rec[BN] = prefix + event.name if one_name else prefix
                if len(units) == 1 and None not in units and units != {bu}:
                    bu = event.unit
                    rec[BU] = bu
            if row.seq != next_seq:
                rec[BSEQ] = row.seq
            next_seq = row.seq + 1
            if not one_name:
                rec[N] = event.name
            if event.unit is not None and event.unit != bu:
                rec[U] = event.unit
            offset = event.time_ms - base_ms
            if offset:
                rec[T] = offset
            label, value = _value_field(event.value)
            rec[label] = value
            records.append(rec)
    try:
        return cbor2.dumps(records, default=_write_float)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError) as exc:
        raise SenmlError(f"cannot encode the pack: {exc}") from None


def deflate(pack: bytes) -> bytes:
    """`pack` compressed with raw deflate (RFC 1951)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return z.compress(pack) + z.flush()


def inflate(data: bytes) -> bytes:
    """The pack inside raw-deflate `data`; `SenmlError` if it is not exactly that."""
    z = zlib.decompressobj(-15)
    try:
        out = z.decompress(data, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise SenmlError(f"not raw deflate: {exc}") from None
    if len(out) > MAX_INFLATED_BYTES:
        raise SenmlError(f"inflates to more than {MAX_INFLATED_BYTES} bytes")
    if not z.eof:
        raise SenmlError("deflate stream is truncated")
    if z.unused_data:
        raise SenmlError(f"{len(z.unused_data)} bytes after the deflate stream")
    return out


# -- decoding ------------------------------------------------------------------------


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _seconds_to_ms(x: int | float, label: str) -> int:
    if isinstance(x, int):
        return x * 1000
    ms = x * 1000.0
    if not math.isfinite(ms):
        raise SenmlError(f"{label} {x!r} is not a finite time")
    return round(ms)


def _loads(payload: bytes) -> object:
    fp = io.BytesIO(payload)
    try:
        obj = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise SenmlError(f"not CBOR: {exc}") from None
    if fp.tell() != len(payload):
        raise SenmlError(f"{len(payload) - fp.tell()} bytes after the CBOR item")
    return obj


class _Reader:
    """The base fields in force while records are read in order."""

    def __init__(self) -> None:
        self.bn = ""
        self.bt: int | float = 0
        self.bu: str | None = None
        self.bv: int | float = 0
        self.tres = 0
        self.next_seq: int | None = None

    def base(self, rec: dict[Any, Any]) -> None:
        if BVER in rec:
            bver = rec[BVER]
            if not isinstance(bver, int) or isinstance(bver, bool) or not 1 <= bver <= 10:
                raise SenmlError(f"bver {bver!r}: this reader knows SenML version 10")
        if BN in rec:
            if not isinstance(rec[BN], str):
                raise SenmlError("bn is not text")
            self.bn = rec[BN]
        if BT in rec:
            if not _is_number(rec[BT]):
                raise SenmlError("bt is not a number")
            self.bt = rec[BT]
        if BU in rec:
            if not isinstance(rec[BU], str):
                raise SenmlError("bu is not text")
            self.bu = rec[BU]
        if BV in rec:
            if not _is_number(rec[BV]):
                raise SenmlError("bv is not a number")
            self.bv = rec[BV]
        if BTRES in rec:
            if rec[BTRES] not in (0, MILLISECONDS) or isinstance(rec[BTRES], bool | float):
                raise SenmlError(f"btres_ {rec[BTRES]!r}: only 0 (s) and -3 (ms) are known")
            self.tres = rec[BTRES]
        if BSEQ in rec:
            seq = rec[BSEQ]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise SenmlError(f"bseq_ {seq!r} is not a non-negative integer")
            self.next_seq = seq

    def record(self, rec: dict[Any, Any]) -> Record:
        for key in rec:
            if isinstance(key, str):
                if key.endswith("_") and key not in (BSEQ, BTRES):
                    raise SenmlError(f"unknown must-understand label {key!r}")
            elif not isinstance(key, int) or isinstance(key, bool):
                raise SenmlError(f"label {key!r} is neither an integer nor text")
        self.base(rec)

        n = rec.get(N, "")
        if not isinstance(n, str):
            raise SenmlError("n is not text")
        full = self.bn + n
        if not _NAME_CHARS.fullmatch(full):
            raise SenmlError(f"resolved name {full!r} is empty or has forbidden characters")
        parts = full.split("/", 3)
        if len(parts) != 4 or not parts[3]:
            raise SenmlError(f"resolved name {full!r} is not agent/stream/name")
        agent, stream, name = parts[0], f"{parts[1]}/{parts[2]}", parts[3]
        if not AGENT_PATTERN.fullmatch(agent) or not STREAM_PATTERN.fullmatch(stream):
            raise SenmlError(f"resolved name {full!r} is not agent/stream/name")

        present = [label for label in _VALUE_LABELS if label in rec]
        if len(present) != 1:
            raise SenmlError(f"record {full!r} has {len(present)} values, need exactly one")
        value = rec[present[0]]
        if present[0] == V:
            if not _is_number(value):
                raise SenmlError("v is not a number")
            if self.bv:
                value = self.bv + value
        elif present[0] == VS and not isinstance(value, str):
            raise SenmlError("vs is not text")
        elif present[0] == VB and not isinstance(value, bool):
            raise SenmlError("vb is not a boolean")
        elif present[0] == VD and not isinstance(value, bytes):
            raise SenmlError("vd is not a byte string")

        unit = rec.get(U, self.bu)
        if unit is not None and not isinstance(unit, str):
            raise SenmlError("u is not text")

        t = rec.get(T, 0)
        if not _is_number(t):
            raise SenmlError("t is not a number")
        if self.tres == MILLISECONDS:
            if not isinstance(t, int):
                raise SenmlError("t is not an integer of milliseconds")
            time_ms = _seconds_to_ms(self.bt, "bt") + t
        else:
            time_ms = _seconds_to_ms(self.bt, "bt") + _seconds_to_ms(t, "t")

        if self.next_seq is None:
            raise SenmlError(f"record {full!r} has no sequence number (bseq_)")
        seq = self.next_seq
        self.next_seq = seq + 1
        return Record(agent, stream, seq, time_ms, name, value, unit)


def decode(payload: bytes, *, deflated: bool = False) -> list[Record]:
    """The records of a pack (inflated first if `deflated`), in pack order."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise SenmlError(f"payload is {type(payload).__name__}, not bytes")
    data = inflate(bytes(payload)) if deflated else bytes(payload)
    pack = _loads(data)
    if not isinstance(pack, list):
        raise SenmlError("a pack is a CBOR array of records")
    reader = _Reader()
    out: list[Record] = []
    for rec in pack:
        if not isinstance(rec, dict):
            raise SenmlError("a record is a CBOR map")
        out.append(reader.record(rec))
    return out
