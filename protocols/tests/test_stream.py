"""The incremental stream decoder: any split, any garbage, never an exception."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import frames, raw_of, wire_of

from kommune.protocols import frame
from kommune.protocols.frame import Frame
from kommune.protocols.stream import StreamDecoder


class Collector:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.decoder = StreamDecoder(self.on_frame)

    def on_frame(self, f: Frame) -> None:
        assert f is self.decoder.frame  # one reused Frame: zero allocation per frame
        self.frames.append(f.copy())

    def feed_in(self, data: bytes, cuts: list[int]) -> None:
        bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
        for a, b in itertools.pairwise(bounds):
            self.decoder.feed(data, a, b)


noise = st.binary(max_size=600)
no_zero_noise = st.binary(max_size=600).map(lambda b: b.replace(b"\x00", b"\x5a"))


@given(st.lists(frames(), max_size=6), st.lists(st.integers(0, 5000), max_size=20))
def test_frames_come_out_whole_however_the_bytes_are_split(
    sent: list[Frame], cuts: list[int]
) -> None:
    c = Collector()
    c.feed_in(b"".join(f.to_bytes() for f in sent), cuts)
    assert c.frames == sent
    assert c.decoder.frames_ok == len(sent) and c.decoder.frames_bad == 0


@given(st.lists(st.tuples(noise, frames()), max_size=5), st.lists(st.integers(0, 5000)))
def test_garbage_before_a_leading_delimiter_never_costs_the_frame(
    chunks: list[tuple[bytes, Frame]], cuts: list[int]
) -> None:
    # Senders that put 0x00 before each frame (see stream.py) lose no frame to noise.
    c = Collector()
    c.feed_in(b"".join(g + b"\x00" + f.to_bytes() for g, f in chunks), cuts)
    assert c.frames == [f for _, f in chunks]


@given(noise, st.lists(frames(), min_size=1, max_size=4))
def test_decoder_recovers_after_garbage_without_leading_delimiter(
    garbage: bytes, sent: list[Frame]
) -> None:
    # Garbage with no 0x00 in front of a frame spoils that one frame at most.
    c = Collector()
    c.decoder.feed(garbage + b"".join(f.to_bytes() for f in sent))
    assert len(c.frames) >= len(sent) - 1
    assert c.frames[len(c.frames) - len(sent) + 1 :] == sent[1:]
    if garbage.endswith(b"\x00") or not garbage:
        assert c.frames == sent


@given(noise, st.lists(st.integers(0, 700), max_size=10))
def test_any_bytes_are_consumed_without_raising(data: bytes, cuts: list[int]) -> None:
    c = Collector()
    c.feed_in(data, cuts)
    packets = [p for p in data.split(b"\x00")[:-1] if p]  # complete, non-empty packets
    d = c.decoder
    assert d.frames_ok + d.frames_bad == len(packets)
    assert sum(d.errors.values()) == d.frames_bad
    assert len(d._buf) == frame.MAX_ENCODED  # bounded, never grown
    for f in c.frames:  # anything accepted is a real frame, bit for bit
        assert f.to_bytes()[:-1] in packets


@given(st.lists(frames(), min_size=1, max_size=5), st.data())
def test_corrupted_streams_deliver_only_frames_that_were_sent(
    sent: list[Frame], data: st.DataObject
) -> None:
    wire = bytearray(b"".join(f.to_bytes() for f in sent))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        i = data.draw(st.integers(0, len(wire) - 1))
        if op == "flip":
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "drop":
            del wire[i]
        else:
            wire.insert(i, data.draw(st.integers(0, 255)))
    c = Collector()
    c.decoder.feed(bytes(wire) + b"\x00")
    for f in c.frames:
        assert f in sent


def test_overlong_packet_is_dropped_and_counted_once() -> None:
    good = Frame(0x20, b"\x10\x00\x00", dst=4, seq=1).to_bytes()
    c = Collector()
    c.decoder.feed(b"\x7f" * 1000)
    assert c.decoder.frames_bad == 0  # not over until the delimiter
    c.decoder.feed(b"\x00" + good)
    assert c.frames == [Frame.from_bytes(good)]
    assert c.decoder.errors == {"too_long": 1}
    assert c.decoder.bytes_dropped == 1000


def test_error_counters_name_each_reason() -> None:
    good = Frame(0x20, b"\x10\x00\x00", dst=4, seq=1)
    raw = bytearray(raw_of(good.to_bytes()))
    raw[11] ^= 0x10
    c = Collector()
    c.decoder.feed(wire_of(bytes(raw)) + b"\x03\x01\x00" + b"\x00\x00" + good.to_bytes())
    assert c.decoder.errors == {"bad_crc": 1, "bad_encoding": 1}
    assert c.decoder.last_error == "bad_encoding"
    assert c.frames == [good]


def test_reset_drops_a_partial_frame() -> None:
    wire = Frame(0x20, b"\x10\x00\x00", dst=4).to_bytes()
    c = Collector()
    c.decoder.feed(wire[:5])
    c.decoder.reset()
    c.decoder.feed(wire)
    assert c.frames == [Frame.from_bytes(wire)]
    assert c.decoder.bytes_dropped == 5


def test_callback_errors_propagate_and_the_decoder_keeps_working() -> None:
    wire = Frame(0x20, b"\x10\x00\x00", dst=4).to_bytes()
    seen: list[int] = []

    def on_frame(f: Frame) -> None:
        seen.append(f.seq)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    d = StreamDecoder(on_frame)
    with pytest.raises(RuntimeError):
        d.feed(wire + wire)
    assert d.feed(wire) == 1
    assert seen == [0, 0]


FUZZ = """
import random
from kommune.protocols import lamp, parking, runtime
from kommune.protocols.errors import ProtocolError
from kommune.protocols.frame import Frame
from kommune.protocols.message import REGISTRY
from kommune.protocols.stream import StreamDecoder

random.seed(1234)
good = Frame(0x20, b"\\x10\\x00\\x00", dst=4).to_bytes()
got = []
dec = StreamDecoder(lambda f: got.append(f.seq))
classes = list(REGISTRY.values())
rejected = 0
for i in range(3000):
    n = random.getrandbits(8)
    data = bytes(random.getrandbits(8) for _ in range(n))
    if i % 3 == 0:
        data = data.replace(b"\\x00", b"\\x01")
    dec.feed(data)
    dec.feed(b"\\x00" + good)
    for call in (Frame.from_bytes, classes[i % len(classes)].from_bytes):
        try:
            call(data)
        except ProtocolError:
            rejected += 1
print(len(got), dec.frames_bad > 0, rejected > 0)
"""


@pytest.mark.micropython
def test_micropython_decoders_survive_random_bytes() -> None:
    # Totality on the device's interpreter, not just CPython: only ProtocolError escapes.
    from kommune.hil import vm
    from kommune.hil.paths import PROTOCOLS_ROOT

    proc = vm.run(["-c", FUZZ], path=[PROTOCOLS_ROOT], heapsize="256K", timeout_s=100)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3000", "True", "True"]  # every good frame recovered
