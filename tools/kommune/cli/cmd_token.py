"""`kommune token issue|revoke`: visit tokens from the site key store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kommune.cli.errors import CliError

if TYPE_CHECKING:
    from kommune.edge.keystore import KeyStore

EPILOG = """examples:
  kommune token issue --lock 1017 --holder 4242 --from 2026-12-01T08:00 --until 2026-12-01T09:00
      a token for staff member 4242 at lock 1017 for that hour (local time), rights
      'unlock'; written to token-1017-4242.json (mode 0600): give it to the phone
  kommune token issue --lock 1017 --holder 4242 --from now --until +45m --rights unlock,lock \\
      --out visit.json --json
  kommune token revoke --lock 1017 --token 3735928559     deny-list one token
  kommune token revoke --lock 1017 --all                  revoke every token of the lock
      (its epoch goes up; re-issue the tokens still needed)

Times: ISO 8601 (local time unless an offset such as +01:00 or Z is given), 'now', or
relative to now: +30s, +45m, +2h, +1d. The key store: --keystore DIR, else
$KOMMUNE_KEYSTORE, else ~/.local/share/kommune/keystore (/var/lib/kommune/keystore as
root); made owner-only on first use, with a new random site key. The token file's
format (for phone apps): docs/tokens.md.
"""


def add_keystore_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keystore",
        type=Path,
        metavar="DIR",
        help="the site key store (default: $KOMMUNE_KEYSTORE, else "
        "~/.local/share/kommune/keystore; /var/lib/kommune/keystore as root)",
    )


def open_keystore(args: argparse.Namespace) -> KeyStore:
    from kommune.edge.keystore import KeyStore, KeyStoreError

    try:
        return KeyStore.open(args.keystore)
    except KeyStoreError as e:
        raise CliError(f"key store: {e}") from e


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary + ". Tokens are sealed under the lock's key, derived from the"
        " site key in the key store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    issue = actions.add_parser(
        "issue",
        help="mint a token for one holder, one lock, one time window",
        description="Mint a token and write it, with the holder's session key, to a file "
        "only you can read (mode 0600).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    issue.add_argument("--lock", type=int, required=True, metavar="ID", help="the lock's id")
    issue.add_argument("--holder", type=int, required=True, metavar="ID", help="staff member id")
    issue.add_argument("--from", dest="start", required=True, metavar="TIME", help="valid from")
    issue.add_argument("--until", required=True, metavar="TIME", help="valid until (inclusive)")
    issue.add_argument(
        "--rights", default="unlock", help="comma-separated: unlock, lock, read-audit, admin"
    )
    issue.add_argument(
        "--address", metavar="AA:BB:..", help="the lock's BLE address, to put in the file"
    )
    issue.add_argument(
        "--out", type=Path, metavar="FILE", help="where (default: token-LOCK-HOLDER.json)"
    )
    issue.add_argument("--force", action="store_true", help="replace FILE if it exists")
    issue.add_argument("--json", action="store_true", help="print the token's fields as JSON")
    add_keystore_option(issue)
    issue.set_defaults(run=run_issue)

    revoke = actions.add_parser(
        "revoke",
        help="deny-list one token, or revoke every token of a lock",
        description="Record a revocation in the key store; the edge's lock manager takes "
        "it to the lock (a token from the new epoch also carries --all to the lock).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    revoke.add_argument("--lock", type=int, required=True, metavar="ID", help="the lock's id")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", type=int, metavar="ID", help="the token id to deny-list")
    which.add_argument("--all", action="store_true", help="every token: bump the lock's epoch")
    revoke.add_argument("--json", action="store_true", help="print the result as JSON")
    add_keystore_option(revoke)
    revoke.set_defaults(run=run_revoke)


def _check_id(name: str, value: int) -> None:
    if not 1 <= value <= 0xFFFF_FFFF:
        raise CliError(f"{name} {value}: expected 1..4294967295")


def run_issue(args: argparse.Namespace) -> int:
    from kommune.edge.keystore import KeyStoreError
    from kommune.edge.lock import tokenfile
    from kommune.edge.lock.times import TimeFormatError, format_time, parse_time
    from kommune.edge.token_authority import TokenAuthorityError, parse_rights

    _check_id("--lock", args.lock)
    _check_id("--holder", args.holder)
    try:
        start = parse_time(args.start)
        until = parse_time(args.until)
    except TimeFormatError as e:
        raise CliError(str(e)) from e
    if until < start:
        raise CliError(
            f"--until {format_time(until)} is before --from {format_time(start)}: empty window"
        )
    try:
        rights = parse_rights(args.rights)
    except TokenAuthorityError as e:
        raise CliError(f"--rights: {e}") from e
    out: Path = args.out or Path(f"token-{args.lock}-{args.holder}.json")
    if out.exists() and not args.force:
        raise CliError(f"--out {out}: exists; not overwritten (--force replaces it)")
    with open_keystore(args) as store:
        try:
            authority = store.authority()
            issued = authority.issue(
                holder_id=args.holder,
                lock_id=args.lock,
                not_before_s=start,
                not_after_s=until,
                rights=rights,
            )
            token = tokenfile.TokenFile.from_issued(
                issued, lock_address=args.address, site_id=store.site_id()
            )
            try:
                tokenfile.write(out, token, force=args.force)
            except FileExistsError:
                raise CliError(
                    f"--out {out}: exists; not overwritten (--force replaces it)"
                ) from None
            except OSError as e:
                raise CliError(f"--out {out}: {e.strerror or e}") from e
            store.record_issued(issued)
        except (KeyStoreError, TokenAuthorityError) as e:
            raise CliError(str(e)) from e
    summary = {k: v for k, v in token.to_json().items() if k not in ("token", "session_key")}
    summary["file"] = str(out)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"token {issued.token_id} for holder {issued.holder_id} at lock {issued.lock_id}: "
            f"{format_time(start)} .. {format_time(until)}, rights {','.join(summary['rights'])}"
            f", epoch {issued.epoch}"
        )
        print(f"  written to {out} (mode 0600: it holds the holder's session key)")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from kommune.edge.keystore import KeyStoreError
    from kommune.edge.lock.times import format_time

    _check_id("--lock", args.lock)
    with open_keystore(args) as store:
        try:
            if args.all:
                epoch = store.revoke_all(args.lock)
                result: dict[str, Any] = {"lock_id": args.lock, "revoked": "all", "epoch": epoch}
                line = (
                    f"lock {args.lock}: every token revoked (epoch now {epoch}); the edge "
                    "takes the epoch to the lock, and so does the first token issued from now on"
                )
            else:
                _check_id("--token", args.token)
                until = store.revoke_token(args.lock, args.token)
                result = {
                    "lock_id": args.lock,
                    "revoked": "token",
                    "token_id": args.token,
                    "known": until is not None,
                    "deny_list": store.deny_list(args.lock),
                }
                known = (
                    f" (valid until {format_time(until)})"
                    if until is not None
                    else " (not issued from this key store; deny-listed anyway)"
                )
                line = (
                    f"lock {args.lock}: token {args.token} deny-listed{known}; the edge takes "
                    "the deny-list to the lock"
                )
        except KeyStoreError as e:
            raise CliError(str(e)) from e
    print(json.dumps(result) if args.json else line)
    return 0
