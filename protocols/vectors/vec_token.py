# Golden-vector adapter for access tokens (kommune.protocols.token).
#
# "hex" is a token's 42 bytes; "fields" its fields with the tag as hex.
# Ops (keys as hex): "sign" -> token hex for args["token"] fields under
# args["key"]; "session_key" -> the holder's session key for args["token"];
# "verify" -> what the lock learns from args["token"] at lock args["lock_id"],
# clock args["now_s"], epoch args["epoch"], for op args["right"].
from kommune.protocols import token as tokens
from kommune.protocols.lock_wire import lock_key

_INTS = ("token_id", "holder_id", "lock_id", "not_before_s", "not_after_s", "rights", "epoch")


def _fields(tok):
    fields = {name: getattr(tok, name) for name in _INTS}
    fields["tag"] = tok.tag.hex()
    return fields


def _token(fields):
    ints = {name: fields[name] for name in _INTS}
    return tokens.Token(tag=bytes.fromhex(fields.get("tag", "")), **ints)


def decode(data):
    return _fields(tokens.decode(data))


def encode(fields):
    return tokens.encode(_token(fields))


def op(name, args):
    key = lock_key(bytes.fromhex(args["key"]))
    if name == "sign":
        return tokens.sign(key, _token(args["token"])).hex()
    data = bytes.fromhex(args["token"])
    if name == "session_key":
        return tokens.session_key(key, tokens.decode(data)).hex()
    if name == "verify":
        tok = tokens.verify(
            data,
            key,
            args["lock_id"],
            now_s=args["now_s"],
            epoch=args["epoch"],
            right=args["right"],
            skew_s=args.get("skew_s", tokens.DEFAULT_SKEW_S),
        )
        return {"token_id": tok.token_id, "holder_id": tok.holder_id, "rights": tok.rights}
    raise ValueError("unknown op " + name)
