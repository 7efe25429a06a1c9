# Golden-vector adapter for access tokens (kommune.protocols.token).
#
# "hex" is a token's 25-byte body (the fields that are sealed); "fields" its
# fields. Ops (keys as hex): "seal" -> the sealed token for args["token"]
# fields under args["key"]; "open" -> the fields (and seal tag) the lock at
# args["lock_id"] reads from args["token"]; "session_key" -> the holder's
# session key for the sealed args["token"]; "verify" -> what the lock learns
# from args["token"] at clock args["now_s"], epoch args["epoch"], for op
# args["right"]; "check" -> the structure check anyone can make (no key).
from kommune.protocols import token as tokens
from kommune.protocols.seal import SealKey

_INTS = ("token_id", "holder_id", "lock_id", "not_before_s", "not_after_s", "rights", "epoch")


def _fields(tok):
    return {name: getattr(tok, name) for name in _INTS}


def _token(fields):
    ints = {name: fields[name] for name in _INTS}
    return tokens.Token(**ints)


def decode(data):
    return _fields(tokens.decode_body(data))


def encode(fields):
    return tokens.encode_body(_token(fields))


def op(name, args):
    if name == "check":
        tokens.check_sealed(bytes.fromhex(args["token"]))
        return True
    key = SealKey(bytes.fromhex(args["key"]))
    if name == "seal":
        return tokens.seal_token(key, _token(args["token"])).hex()
    data = bytes.fromhex(args["token"])
    if name == "open":
        tok = tokens.authenticate(data, key, args["lock_id"])
        fields = _fields(tok)
        fields["tag"] = tok.tag.hex()
        return fields
    if name == "session_key":
        return tokens.session_key(key, tokens.authenticate(data, key, args["lock_id"])).hex()
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
