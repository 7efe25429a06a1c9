# Shared by vec_lamp, vec_parking and vec_runtime (not a vector file itself).
#
# Vector convention for messages: "hex" is the frame's type byte followed by
# the payload, i.e. what message.decode_frame() sees; "fields" is
# {"type": class name, field: value, ...} with bytes fields as hex strings.
from kommune.protocols.errors import TRUNCATED, ProtocolError
from kommune.protocols.message import BLOB, RAW, TAIL, message_class

_BYTES_KINDS = (RAW, BLOB, TAIL)


def _by_name(name):
    from kommune.protocols.message import REGISTRY

    for cls in REGISTRY.values():
        if cls.__name__ == name:
            return cls
    raise KeyError(name)


def decode(data):
    if not data:
        raise ProtocolError(TRUNCATED, "no type byte")
    cls = message_class(data[0])
    msg = cls().decode(data, 1, len(data))
    out = {"type": cls.__name__}
    for name, kind, _, _ in cls._LAYOUT:
        v = getattr(msg, name)
        out[name] = v.hex() if kind in _BYTES_KINDS else v
    return out


def encode(fields):
    cls = _by_name(fields["type"])
    kwargs = {}
    for name, kind, _, _ in cls._LAYOUT:
        v = fields[name]
        kwargs[name] = bytes.fromhex(v) if kind in _BYTES_KINDS else v
    msg = cls(**kwargs)
    return bytes([cls.TYPE]) + msg.to_bytes()
