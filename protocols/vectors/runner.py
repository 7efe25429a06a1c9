# Golden-vector runner, the same file under CPython (pytest imports it) and
# MicroPython (`micropython runner.py DIR` prints one JSON line per case).
#
# A vector file `NAME.json` is {"adapter": "NAME", "cases": [...]} and is
# checked through the adapter module `vec_NAME.py` beside it, which turns
# bytes into plain JSON fields and back. Case shapes:
#   {"name", "hex", "fields"}          decode(hex) == fields, encode(fields) == hex
#   {"name", "hex", "fields", "decode_only": true}   only the first half
#   {"name", "hex", "error"}           decode(hex) raises ProtocolError(error)
#   {"name", "op", "args", "result"}   adapter.op(op, args) == result
#   {"name", "op", "args", "error"}    adapter.op(op, args) raises ProtocolError(error)
import json
import sys

from kommune.protocols.errors import ProtocolError


def load_adapter(name):
    return __import__("vec_" + name)


def _expect_error(call, reason):
    try:
        got = call()
    except ProtocolError as e:
        if e.reason != reason:
            return "expected error %r, got %r (%s)" % (reason, e.reason, e.detail)
        return None
    return "expected error %r, got result %r" % (reason, got)


def check_case(adapter, case):
    # Returns None when the case holds, else one line saying what differed.
    op = case.get("op")
    if op is not None:
        args = case.get("args", {})
        if "error" in case:
            return _expect_error(lambda: adapter.op(op, args), case["error"])
        got = adapter.op(op, args)
        if got != case["result"]:
            return "op %s: expected %r, got %r" % (op, case["result"], got)
        return None
    data = bytes.fromhex(case["hex"])
    if "error" in case:
        return _expect_error(lambda: adapter.decode(data), case["error"])
    got = adapter.decode(data)
    if got != case["fields"]:
        return "decode: expected %r, got %r" % (case["fields"], got)
    if not case.get("decode_only"):
        enc = adapter.encode(case["fields"])
        if enc != data:
            return "encode: expected %s, got %s" % (case["hex"], enc.hex())
    return None


def run_case(adapter, case):
    # check_case, with any non-protocol exception reported as a failure.
    try:
        return check_case(adapter, case)
    except ProtocolError as e:
        return "unexpected ProtocolError: %s" % e
    except Exception as e:  # a vector must never crash the runner
        return "crashed: %s: %s" % (type(e).__name__, e)


def vector_files(directory):
    import os

    names = [n for n in os.listdir(directory) if n.endswith(".json")]
    names.sort()
    return [directory + "/" + n for n in names]


def load_file(path):
    with open(path) as f:
        return json.load(f)


def main(directory):
    # One JSON object per case: {"file", "name", "ok", "message"}.
    for path in vector_files(directory):
        doc = load_file(path)
        adapter = load_adapter(doc["adapter"])
        short = path.rsplit("/", 1)[-1]
        for case in doc["cases"]:
            msg = run_case(adapter, case)
            print(
                json.dumps({"file": short, "name": case["name"], "ok": msg is None, "message": msg})
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
