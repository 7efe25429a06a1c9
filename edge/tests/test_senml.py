"""SenML-CBOR packs of queued rows: the layout RFC 8428 asks for, exact round trips,
millisecond times, the idempotency key on every record, and a total decoder."""

from __future__ import annotations

import math
import struct
import zlib
from collections import defaultdict

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.edge.northbound import Event, Priority, Queued, Value
from kommune.edge.uplink import senml
from kommune.edge.uplink.senml import Record, SenmlError

T0 = 1_795_971_819_123  # a Unix time in milliseconds


def row(
    stream: str,
    seq: int,
    value: Value = True,
    *,
    name: str = "occupied",
    time_ms: int = T0,
    unit: str | None = None,
    row_id: int = 1,
) -> Queued:
    return Queued(row_id, seq, Event(stream, Priority.OCCUPANCY, seq, time_ms, name, value, unit))


def expected(agent: str, rows: list[Queued]) -> list[Record]:
    return [
        Record(
            agent, r.event.stream, r.seq, r.event.time_ms, r.event.name, r.event.value, r.event.unit
        )
        for r in rows
    ]


# -- the layout --------------------------------------------------------------------------


def test_one_stream_carries_names_and_seq_once_and_integer_millisecond_offsets() -> None:
    rows = [row("bay-17/occupancy", 41 + i, i % 2 == 0, time_ms=T0 + 250 * i) for i in range(3)]
    pack = cbor2.loads(senml.encode("edge-1", rows))
    assert pack == [
        {
            -3: T0 // 1000,  # bt: whole seconds
            "btres_": -3,  # t counts milliseconds
            -2: "edge-1/bay-17/occupancy/occupied",  # bn: agent/stream/name
            "bseq_": 41,  # the first record's seq; the others follow by one
            6: 123,
            4: True,
        },
        {6: 373, 4: False},
        {6: 623, 4: True},
    ]


def test_streams_are_grouped_and_names_vary_with_n() -> None:
    rows = [
        row("lamp-1/energy", 7, 12, name="energy_wh", unit="Wh", row_id=1),
        row("lamp-2/energy", 3, 5, name="energy_wh", unit="Wh", row_id=2),
        row("lamp-1/energy", 8, 40.5, name="power_w", unit="W", row_id=3),
    ]
    pack = cbor2.loads(senml.encode("edge-1", rows))
    assert [rec.get(-2) for rec in pack] == [
        "edge-1/lamp-1/energy/",
        None,
        "edge-1/lamp-2/energy/energy_wh",
    ]
    assert [rec.get(0) for rec in pack] == ["energy_wh", "power_w", None]
    assert [rec.get("bseq_") for rec in pack] == [7, None, 3]  # lamp-1: 7, 8; lamp-2: 3
    assert pack[1][2] == 40.5
    assert senml.decode(senml.encode("edge-1", rows)) == expected(
        "edge-1", [rows[0], rows[2], rows[1]]
    )


def test_units_base_and_unitless_streams_come_first() -> None:
    rows = [
        row("lamp-1/energy", 1, 10, name="energy_wh", unit="Wh"),
        row("lamp-1/energy", 2, 11, name="energy_wh", unit="Wh"),
        row("lamp-2/state", 1, "on", name="mode"),
    ]
    pack = cbor2.loads(senml.encode("edge-1", rows))
    # The unit-less stream first: once bu is set no later record could be without a unit.
    assert pack[0][-2] == "edge-1/lamp-2/state/mode"
    assert -4 not in pack[0] and 1 not in pack[0]
    assert pack[1][-4] == "Wh" and 1 not in pack[1] and 1 not in pack[2]
    decoded = senml.decode(senml.encode("edge-1", rows))
    assert sorted(decoded) == sorted(expected("edge-1", rows))


def test_floats_take_the_shortest_exact_cbor_float() -> None:
    def value_bytes(x: float) -> bytes:
        raw = senml.encode("a", [row("s-1/k", 1, x)])
        return raw[raw.rindex(b"\x02") + 1 :]  # after the v label

    assert value_bytes(1.5) == b"\xf9\x3e\x00"  # half
    assert value_bytes(100000.0) == b"\xfa" + struct.pack(">f", 100000.0)  # single
    assert value_bytes(0.1) == b"\xfb" + struct.pack(">d", 0.1)  # double
    nan = senml.decode(senml.encode("a", [row("s-1/k", 1, math.nan)]))[0].value
    assert isinstance(nan, float) and math.isnan(nan)


def test_seq_restates_itself_after_a_gap() -> None:
    rows = [row("s-1/k", s, row_id=s) for s in (5, 6, 9, 10)]
    pack = cbor2.loads(senml.encode("a", rows))
    assert [rec.get("bseq_") for rec in pack] == [5, None, 9, None]
    assert [r.seq for r in senml.decode(senml.encode("a", rows))] == [5, 6, 9, 10]


def test_millisecond_times_survive_far_from_the_base() -> None:
    times = [T0, T0 - 1, T0 + 86_400_000 * 400, -1, 0]
    rows = [row("s-1/k", i, time_ms=t, row_id=i) for i, t in enumerate(times)]
    assert [r.time_ms for r in senml.decode(senml.encode("a", rows))] == times


def test_an_empty_batch_is_an_empty_pack() -> None:
    assert senml.encode("a", []) == b"\x80"
    assert senml.decode(b"\x80") == []


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (row("Bay-17/occupancy", 1), "stream"),
        (row("bay-17", 1), "stream"),
        (row("bay-17/occupancy", 1, name=""), "record name"),
        (row("bay-17/occupancy", 1, name="zwei wörter"), "record name"),
        (row("bay-17/occupancy", -1), "seq"),
        (row("bay-17/occupancy", 1, [1, 2]), "value"),  # type: ignore[arg-type]
    ],
)
def test_rows_that_cannot_be_senml_are_refused(bad: Queued, says: str) -> None:
    with pytest.raises(SenmlError, match=says):
        senml.encode("edge-1", [bad])
    with pytest.raises(SenmlError, match=says):
        senml.check_row(bad)


def test_agent_must_be_one_topic_level() -> None:
    for agent in ("", "Edge", "a/b", "a+", "#"):
        with pytest.raises(SenmlError, match="agent"):
            senml.encode(agent, [row("s-1/k", 1)])


# -- round trips ---------------------------------------------------------------------------

_part = st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True)
streams = st.builds(lambda a, b: f"{a}/{b}", _part, _part)
names = st.from_regex(r"[A-Za-z0-9\-:./_]{1,12}", fullmatch=True)
values = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
events = st.builds(
    lambda stream, seq, t, name, value, unit: (stream, seq, t, name, value, unit),
    streams,
    st.integers(min_value=0, max_value=2**64),
    st.integers(min_value=-(2**62), max_value=2**62),
    names,
    values,
    st.none() | st.sampled_from(["W", "Wh", "%", "Cel", "lx"]),
)


def _same(a: Value, b: Value) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            return math.isnan(b)
        return struct.pack(">d", a) == struct.pack(">d", b)  # -0.0 stays -0.0
    return type(a) is type(b) and a == b


@given(agent=_part, batch=st.lists(events, max_size=40), deflated=st.booleans())
def test_round_trip_is_exact_per_stream(
    agent: str, batch: list[tuple[str, int, int, str, Value, str | None]], deflated: bool
) -> None:
    rows = [
        Queued(i + 1, seq, Event(stream, Priority.TELEMETRY, seq, t, name, value, unit))
        for i, (stream, seq, t, name, value, unit) in enumerate(batch)
    ]
    pack = senml.encode(agent, rows)
    payload = senml.deflate(pack) if deflated else pack
    decoded = senml.decode(payload, deflated=deflated)
    assert len(decoded) == len(rows)
    by_stream: dict[str, list[Record]] = defaultdict(list)
    for rec in decoded:
        by_stream[rec.stream].append(rec)
    for stream, recs in by_stream.items():
        sent = [r for r in rows if r.event.stream == stream]  # in their order
        assert len(recs) == len(sent)
        for got, want in zip(recs, sent, strict=True):
            assert (got.agent, got.stream, got.seq) == (agent, stream, want.seq)
            assert got.time_ms == want.event.time_ms
            assert got.name == want.event.name
            assert got.unit == want.event.unit
            assert _same(got.value, want.event.value), (got.value, want.event.value)


# -- the decoder is total ------------------------------------------------------------------


@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_decode_or_raise_senml_error(data: bytes, deflated: bool) -> None:
    try:
        records = senml.decode(data, deflated=deflated)
    except SenmlError:
        return
    assert all(isinstance(r, Record) for r in records)


cbor_items = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.sampled_from([-3, -2, -1, 0, 2, 4, 6, 8, "bseq_", "btres_", "x_", "edge-1/a/b/"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    -6,
                    -5,
                    -4,
                    -3,
                    -2,
                    -1,
                    0,
                    1,
                    2,
                    3,
                    4,
                    5,
                    6,
                    7,
                    8,
                    99,
                    "bseq_",
                    "btres_",
                    "zz_",
                    "q",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=25,
)


@given(st.lists(cbor_items, max_size=6))
def test_any_cbor_structure_decodes_or_raises_senml_error(pack: list[object]) -> None:
    data = cbor2.dumps(pack)
    try:
        senml.decode(data)
    except SenmlError:
        pass


@given(st.data())
def test_damaged_packs_decode_or_raise_senml_error(data: st.DataObject) -> None:
    rows = [row("bay-1/occupancy", i, i % 3 == 0, time_ms=T0 + i, row_id=i) for i in range(1, 6)]
    pack = bytearray(senml.encode("edge-1", rows))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(pack) - 1))
        pack[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(pack)))
    for candidate in (bytes(pack), bytes(pack[:cut])):
        try:
            senml.decode(candidate)
        except SenmlError:
            pass


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"", "not CBOR"),
        (b"\x80\x00", "after the CBOR item"),
        (cbor2.dumps({"bn": 1}), "array"),
        (cbor2.dumps([1]), "map"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", 2: 1}]), "sequence number"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, 2: 1, 3: "x"}]), "2 values"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, "new_": 1, 2: 1}]), "must-understand"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, "btres_": -6, 2: 1}]), "btres_"),
        (cbor2.dumps([{-2: "edge-1/a-b/c", "bseq_": 1, 2: 1}]), "agent/stream/name"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, "btres_": -3, 6: 0.5, 2: 1}]), "integer"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, -3: math.inf, 2: 1}]), "finite"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, -1: 11, 2: 1}]), "version"),
        (cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, 4: 1}]), "boolean"),
        (cbor2.dumps([[]] * 1) + b"", "map"),
        (b"\xd8\x1c\x81\xd8\x1d\x00", "map"),  # a list that contains itself (CBOR tags 28/29)
        (b"\x81" * 100_000, "not CBOR"),  # nested too deep
    ],
)
def test_what_the_decoder_refuses_and_says(payload: bytes, says: str) -> None:
    with pytest.raises(SenmlError, match=says):
        senml.decode(payload)


def test_unknown_plain_labels_are_ignored_as_rfc_8428_says() -> None:
    pack = cbor2.dumps([{-2: "edge-1/a/b/c", "bseq_": 1, "note": "x", 99: 1, 7: 5, 2: 1}])
    assert senml.decode(pack) == [Record("edge-1", "a/b", 1, 0, "c", 1, None)]


def test_seconds_times_without_btres_follow_rfc_8428() -> None:
    pack = cbor2.dumps([{-2: "edge-1/a/b/c", -3: 1_700_000_000, "bseq_": 1, 6: 1.25, 2: 1}])
    assert senml.decode(pack)[0].time_ms == 1_700_000_001_250


def test_inflate_refuses_bombs_truncation_and_trailing_bytes() -> None:
    bomb = senml.deflate(b"\x00" * (senml.MAX_INFLATED_BYTES + 1))
    with pytest.raises(SenmlError, match="more than"):
        senml.decode(bomb, deflated=True)
    good = senml.deflate(senml.encode("a", [row("s-1/k", 1)]))
    with pytest.raises(SenmlError, match="truncated"):
        senml.decode(good[:-2], deflated=True)
    with pytest.raises(SenmlError, match="after the deflate stream"):
        senml.decode(good + b"\x00", deflated=True)
    with pytest.raises(SenmlError, match="not raw deflate"):
        senml.decode(zlib.compress(b"\x80"), deflated=True)  # zlib header: not raw deflate


# -- size --------------------------------------------------------------------------------


def _occupancy(bays: int, events: int) -> list[Queued]:
    seqs: dict[str, int] = defaultdict(int)
    out = []
    for i in range(events):
        stream = f"bay-{i % bays}/occupancy"
        seqs[stream] += 1
        out.append(row(stream, seqs[stream], i % 3 == 0, time_ms=T0 + 37 * i, row_id=i + 1))
    return out


@pytest.mark.parametrize("bays", [1, 20])
def test_occupancy_fits_the_byte_budget(bays: int) -> None:
    rows = _occupancy(bays, 500)
    pack = senml.encode("edge-1", rows)
    assert len(pack) / len(rows) <= 10  # raw: ~7 bytes one stream, ~9 twenty interleaved
    assert len(senml.deflate(pack)) / len(rows) <= 4
