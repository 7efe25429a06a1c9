"""Node-runtime messages, nack codes and idempotent acks."""

from __future__ import annotations

import pytest

from kommune.protocols import dedup, frame, ota, runtime
from kommune.protocols.errors import ProtocolError
from kommune.protocols.frame import Frame
from kommune.protocols.message import MessagePool, encode_frame


def test_every_nack_code_has_a_unique_name() -> None:
    codes = {v for k, v in vars(runtime).items() if k.startswith("NACK_") and isinstance(v, int)}
    names = [runtime.nack_name(c) for c in codes]
    assert len(set(names)) == len(codes)
    assert not any(n.startswith("code_") for n in names)
    assert runtime.nack_name(0x99) == "code_153"


def test_nack_codes_for_protocol_errors() -> None:
    assert runtime.nack_code(ProtocolError("unknown_type")) == runtime.NACK_UNKNOWN_TYPE
    assert runtime.nack_code(ProtocolError("bad_value")) == runtime.NACK_BAD_VALUE
    assert runtime.nack_code(ProtocolError("bad_tag")) == runtime.NACK_REJECTED


def test_a_node_answers_a_retry_as_it_answered_the_first_time() -> None:
    # What a node's link client does with RecentFrames: act once per (src, seq).
    recent = dedup.RecentFrames(size=4)
    actions: list[int] = []

    def receive(src: int, seq: int, level: int) -> int:
        before = recent.answer(src, seq)
        if before != dedup.UNSEEN:
            return before
        answer = dedup.ACKED if level <= 254 else runtime.NACK_BAD_VALUE
        if answer == dedup.ACKED:
            actions.append(level)
        recent.remember(src, seq, answer)
        return answer

    assert receive(0, 7, 100) == dedup.ACKED
    assert receive(0, 7, 100) == dedup.ACKED  # the ack was lost; the retry is not acted on
    assert receive(0, 8, 999) == runtime.NACK_BAD_VALUE
    assert receive(0, 8, 999) == runtime.NACK_BAD_VALUE
    assert receive(5, 7, 50) == dedup.ACKED  # same seq, other sender: a different frame
    assert actions == [100, 50]


def test_recent_frames_forgets_the_oldest() -> None:
    recent = dedup.RecentFrames(size=2)
    recent.remember(0, 1)
    recent.remember(0, 2, runtime.NACK_BUSY)
    recent.remember(0, 2, dedup.ACKED)  # updated in place, not a new entry
    assert recent.answer(0, 1) == dedup.ACKED
    recent.remember(0, 3)
    assert recent.answer(0, 1) == dedup.UNSEEN
    assert recent.answer(0, 2) == dedup.ACKED
    recent.clear()
    assert recent.answer(0, 3) == dedup.UNSEEN


def test_groups_are_group_ids_not_addresses() -> None:
    g = runtime.Groups(groups=[0, 17, frame.MAX_GROUP])
    assert runtime.Groups.from_bytes(g.to_bytes()) == g
    with pytest.raises(ProtocolError, match="bad_value"):
        runtime.Groups(groups=[frame.MAX_GROUP + 1]).to_bytes()
    with pytest.raises(ProtocolError, match="bad_length"):
        runtime.Groups(groups=list(range(runtime.MAX_GROUPS + 1))).to_bytes()


def test_ota_chunk_fills_a_frame_exactly() -> None:
    chunk = ota.OtaChunk(transfer_id=1, offset=0, data=bytes(ota.MAX_CHUNK))
    assert chunk.encoded_size() == frame.MAX_PAYLOAD
    with pytest.raises(ProtocolError, match="bad_length"):
        ota.OtaChunk(data=b"").to_bytes()  # a chunk carries at least one byte


def test_ota_manifest_needs_a_full_digest() -> None:
    with pytest.raises(ProtocolError, match="bad_length"):
        ota.OtaManifest(sha256=bytes(31)).to_bytes()
    m = ota.OtaManifest(transfer_id=3, bundle_size=10, chunk_size=100, sha256=bytes(32))
    assert ota.OtaManifest.from_bytes(m.to_bytes()) == m


def test_hello_uid_is_length_prefixed_and_bounded() -> None:
    h = runtime.Hello(kind=runtime.KIND_LOCK, uid=b"\x01\x02\x03")
    assert h.to_bytes()[-4:] == b"\x03\x01\x02\x03"
    with pytest.raises(ProtocolError, match="bad_length"):
        runtime.Hello(uid=bytes(runtime.MAX_UID + 1)).to_bytes()


def test_time_sync_milliseconds_stay_below_a_second() -> None:
    with pytest.raises(ProtocolError, match="bad_value"):
        runtime.TimeSync(ms=1000).to_bytes()


def test_log_text_stays_bytes() -> None:
    rec = runtime.LogRecord(text="grüß".encode())
    assert runtime.LogRecord.from_bytes(rec.to_bytes()).text == "grüß".encode()
    bad_utf8 = runtime.LogRecord(text=b"\xff\xfe")
    assert runtime.LogRecord.from_bytes(bad_utf8.to_bytes()) == bad_utf8


def test_pool_of_runtime_messages_decodes_an_ack_frame() -> None:
    pool = MessagePool([runtime.Ack, runtime.Nack])
    f = Frame.from_bytes(encode_frame(runtime.Ack(acked_seq=513), dst=0x10, src=0, seq=1))
    ack = pool.decode(f)
    assert isinstance(ack, runtime.Ack) and ack.acked_seq == 513
