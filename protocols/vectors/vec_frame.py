# Golden-vector adapter for node-link frames and the stream decoder.
#
# "hex" is a frame's wire bytes (COBS + 0x00); "fields" are its header fields
# with the payload as hex. Ops: "stream" feeds args["hex"] to a StreamDecoder
# in chunks of args["chunk"] bytes; "crc16" and "cobs" check the primitives;
# "accepts" checks addressing.
from kommune.protocols import cobs, frame
from kommune.protocols.crc16 import crc16
from kommune.protocols.frame import Frame
from kommune.protocols.stream import StreamDecoder


def _fields(f):
    return {
        "version": f.version,
        "flags": f.flags,
        "src": f.src,
        "dst": f.dst,
        "seq": f.seq,
        "type": f.msg_type,
        "payload": f.payload().hex(),
    }


def decode(data):
    return _fields(Frame.from_bytes(data))


def encode(fields):
    f = Frame(
        fields["type"],
        bytes.fromhex(fields["payload"]),
        dst=fields["dst"],
        src=fields["src"],
        seq=fields["seq"],
        flags=fields["flags"],
        version=fields["version"],
    )
    return f.to_bytes()


def _stream(args):
    data = bytes.fromhex(args["hex"])
    step = args.get("chunk", len(data)) or 1
    got = []
    dec = StreamDecoder(lambda f: got.append(_fields(f)))
    for i in range(0, len(data), step):
        dec.feed(data, i, min(i + step, len(data)))
    return {"frames": got, "frames_bad": dec.frames_bad, "errors": dec.errors}


def op(name, args):
    if name == "stream":
        return _stream(args)
    if name == "crc16":
        return crc16(args["text"].encode())
    if name == "cobs_encode":
        return cobs.encode(bytes.fromhex(args["hex"])).hex()
    if name == "cobs_decode":
        return cobs.decode(bytes.fromhex(args["hex"])).hex()
    if name == "accepts":
        return frame.accepts(args["dst"], args["me"], args["groups"])
    if name == "group_address":
        return frame.group_address(args["group"])
    raise ValueError("unknown op " + name)
