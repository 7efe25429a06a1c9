"""`kommune downlink keygen|sign`: the backend's side of signed downlinks."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from kommune.cli.errors import CliError

EPILOG = """examples:
  kommune downlink keygen --out /srv/kommune/keys
      a new Ed25519 key pair: downlink-signing.key (private, mode 0600, stays with
      the backend) and downlink-signing.pub (to every agent: [downlink] backend_key)
  kommune downlink sign --key /srv/kommune/keys/downlink-signing.key \\
      --site nordby --agent '*' --kind deny-list --seq 42 --body deny.json > deny.cbor
      one signed envelope (COSE_Sign1) on stdout, valid for a day (--ttl to change)
  mosquitto_pub -q 1 -t kommune/nordby/all/down/deny-list -f deny.cbor
      publish it: every agent of site nordby checks it, applies it once, reports it

The envelope, the topics and why an agent refuses one: docs/uplink.md, "Downlinks".
"""

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary + ". Agents verify every downlink with the backend's public key.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    keygen = actions.add_parser(
        "keygen",
        help="make the backend's Ed25519 signing key pair (PEM)",
        description="Write downlink-signing.key (mode 0600) and downlink-signing.pub to DIR.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder")
    keygen.set_defaults(run=run_keygen)

    from kommune.edge.downlink.envelope import KINDS

    sign = actions.add_parser(
        "sign",
        help="sign one document; the envelope goes to stdout",
        description="Sign one document for an agent (or '*': every agent of the site).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sign.add_argument("--key", type=Path, required=True, metavar="PRIV", help="private key")
    sign.add_argument("--site", required=True, help="the site it is for")
    sign.add_argument("--agent", required=True, help="the agent it is for, or '*'")
    sign.add_argument("--kind", required=True, choices=KINDS, help="what the document is")
    sign.add_argument(
        "--seq", type=int, required=True, help="sequence number, higher than the last"
    )
    sign.add_argument(
        "--body", type=Path, required=True, metavar="FILE.json", help="the document ('-': stdin)"
    )
    sign.add_argument(
        "--ttl", type=float, default=86_400.0, metavar="S", help="valid for S seconds (a day)"
    )
    sign.add_argument("--out", type=Path, metavar="FILE", help="write here instead of stdout")
    sign.set_defaults(run=run_sign)


def run_keygen(args: argparse.Namespace) -> int:
    from kommune.edge.downlink.keys import write_pair

    folder: Path = args.out
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--out {folder}: not a folder")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new one: the owner's only
        private, public = write_pair(folder)
    except FileExistsError as exc:
        raise CliError(f"--out {folder}: a key is there already ({exc}); not overwritten") from exc
    except OSError as exc:
        raise CliError(f"--out {folder}: {exc.strerror or exc}") from exc
    print(f"private key: {private} (mode 0600; keep it with the backend)")
    print(f"public key:  {public} (give it to the agents: [downlink] backend_key)")
    return 0


def _body(path: Path) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(f"--body {path}: {why}") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--body {path}: not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise CliError(f"--body {path}: expected a JSON object, got {type(body).__name__}")
    return body


def run_sign(args: argparse.Namespace) -> int:
    from kommune.edge.downlink.envelope import MAX_SEQ, sign
    from kommune.edge.downlink.keys import KeyFileError, load_private

    if not _NAME.fullmatch(args.site):
        raise CliError(f"--site {args.site!r}: expected a name of [a-z0-9-], as in the site file")
    if args.agent != "*" and not _NAME.fullmatch(args.agent):
        raise CliError(f"--agent {args.agent!r}: expected an agent id or '*'")
    if not 1 <= args.seq <= MAX_SEQ:
        raise CliError(f"--seq {args.seq}: expected 1..{MAX_SEQ}")
    if not args.ttl > 0:
        raise CliError(f"--ttl {args.ttl:g}: expected a number of seconds > 0")
    try:
        key = load_private(args.key)
    except KeyFileError as exc:
        raise CliError(f"--key {exc}") from exc
    body = _body(args.body)
    now_ms = time.time_ns() // 1_000_000
    try:
        data = sign(
            key,
            kind=args.kind,
            site=args.site,
            agent=args.agent,
            seq=args.seq,
            issued_ms=now_ms,
            expires_ms=now_ms + round(args.ttl * 1000),
            body=body,
        )
    except ValueError as exc:
        raise CliError(f"--body {args.body}: {exc}") from exc
    if args.out is not None:
        try:
            args.out.write_bytes(data)
        except OSError as exc:
            raise CliError(f"--out {args.out}: {exc.strerror or exc}") from exc
    elif sys.stdout.isatty():
        raise CliError("the envelope is binary: redirect stdout to a file, or give --out FILE")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
