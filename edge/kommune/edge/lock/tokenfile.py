"""The token file: what `kommune token issue` writes and a phone app (or `kommune
unlock`) reads. Format, field by field, with an example: docs/tokens.md.

A JSON object, UTF-8, mode 0600 (it holds the holder's session key):

    format "kommune-token", version 1, token (84 hex digits: the 42-byte sealed token),
    session_key (64 hex digits), lock_id, lock_address (or null), token_id, holder_id,
    not_before_s, not_after_s, not_before, not_after (ISO 8601, UTC), rights (names),
    epoch, site_id
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kommune.edge.lock.times import format_time
from kommune.edge.token_authority import IssuedToken
from kommune.protocols import token as tokens
from kommune.protocols.errors import ProtocolError

FORMAT = "kommune-token"
VERSION = 1
_RIGHTS = dict(tokens.RIGHT_NAMES)


class TokenFileError(ValueError):
    """A token file that cannot be used; one line naming the file."""


@dataclass(frozen=True)
class TokenFile:
    """A token as the phone holds it: the sealed bytes, the session key, and the
    fields in clear for the phone's own use (finding the lock, checking the window)."""

    token: bytes
    session_key: bytes = field(repr=False)
    lock_id: int
    token_id: int
    holder_id: int
    not_before_s: int
    not_after_s: int
    rights: int
    epoch: int
    lock_address: str | None = None
    site_id: str = ""

    @classmethod
    def from_issued(
        cls, issued: IssuedToken, *, lock_address: str | None = None, site_id: str = ""
    ) -> TokenFile:
        return cls(
            token=issued.token,
            session_key=issued.session_key,
            lock_id=issued.lock_id,
            token_id=issued.token_id,
            holder_id=issued.holder_id,
            not_before_s=issued.not_before_s,
            not_after_s=issued.not_after_s,
            rights=issued.rights,
            epoch=issued.epoch,
            lock_address=lock_address,
            site_id=site_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "token": self.token.hex(),
            "session_key": self.session_key.hex(),
            "lock_id": self.lock_id,
            "lock_address": self.lock_address,
            "token_id": self.token_id,
            "holder_id": self.holder_id,
            "not_before_s": self.not_before_s,
            "not_after_s": self.not_after_s,
            "not_before": format_time(self.not_before_s, utc=True),
            "not_after": format_time(self.not_after_s, utc=True),
            "rights": tokens.rights_text(self.rights).split(","),
            "epoch": self.epoch,
            "site_id": self.site_id,
        }

    @classmethod
    def from_json(cls, doc: Any, where: str = "token file") -> TokenFile:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise TokenFileError(f"{where}: not a kommune token file (format {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise TokenFileError(f"{where}: version {doc.get('version')!r}, expected {VERSION}")
        try:
            token = bytes.fromhex(doc["token"])
            session_key = bytes.fromhex(doc["session_key"])
            rights = 0
            for name in doc["rights"]:
                rights |= _RIGHTS[name]
            address = doc.get("lock_address")
            out = cls(
                token=token,
                session_key=session_key,
                lock_id=_u32(doc["lock_id"], "lock_id"),
                token_id=_u32(doc["token_id"], "token_id"),
                holder_id=_u32(doc["holder_id"], "holder_id"),
                not_before_s=_u32(doc["not_before_s"], "not_before_s"),
                not_after_s=_u32(doc["not_after_s"], "not_after_s"),
                rights=rights,
                epoch=_u32(doc["epoch"], "epoch"),
                lock_address=str(address) if address else None,
                site_id=str(doc.get("site_id", "")),
            )
            tokens.check_sealed(token)
        except KeyError as e:
            raise TokenFileError(f"{where}: field {e} missing or unknown") from None
        except (TypeError, ValueError) as e:
            raise TokenFileError(f"{where}: {e}") from None
        except ProtocolError as e:
            raise TokenFileError(f"{where}: token: {e}") from None
        if len(session_key) != 32:
            raise TokenFileError(f"{where}: session_key is {len(session_key)} bytes, need 32")
        return out


def _u32(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(f"{name} {value!r} is not a u32")
    return value


def write(path: Path, token: TokenFile, *, force: bool = False) -> None:
    """Write the token file, mode 0600 from its first byte; FileExistsError unless
    `force` (then it is replaced atomically)."""
    data = (json.dumps(token.to_json(), indent=2) + "\n").encode()
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return
    from kommune.edge.keystore import write_atomic

    write_atomic(path, data)


def read(path: Path) -> TokenFile:
    """The token file at `path`; refused if others may read it (it holds a key)."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TokenFileError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: not UTF-8 text") from None
    if st.st_mode & 0o077:
        raise TokenFileError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read the session key;"
            f" refused (chmod 600 {path})"
        )
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise TokenFileError(f"{path}: not JSON: {e}") from None
    return TokenFile.from_json(doc, str(path))
