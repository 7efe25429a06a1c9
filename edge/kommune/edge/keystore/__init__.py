"""The site key store: the site key, the token authority's state, the audit anchors.

One directory outside the repository, owner-only (0700; every file 0600), refused with
one line if its group or others may read it. Runs on the edge (CPython): `kommune
provision lock`, `kommune token issue|revoke` and, later, the edge's lock manager.

    site.key        the 32-byte site key, hex; made on first use (keys.new_site_key)
    authority.json  per lock: the revocation epoch, the deny-list, the tokens issued
                    (their fields, never their keys), the site id
    audit.sqlite    the audit checker's durable anchor: every committed entry's hash
    keystore.lock   held (flock) by the one process writing the store

    with KeyStore.open(path) as store:          # made if missing, locked, checked
        site_key = store.site_key()              # generated and saved on first use
        authority = store.authority()            # TokenAuthority at the stored epochs
        issued = authority.issue(...); store.record_issued(issued)

Writes are atomic (temporary file, fsync, rename, fsync of the directory): a power cut
leaves the old file or the new one. Where it is: `--keystore DIR`, else
`KOMMUNE_KEYSTORE`, else /var/lib/kommune/keystore for root and
`$XDG_DATA_HOME/kommune/keystore` (~/.local/share/kommune/keystore) for a user.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from kommune.edge import keys
from kommune.edge.token_authority import IssuedToken, TokenAuthority

if TYPE_CHECKING:
    from kommune.edge.keystore.audit import AuditStore

KEYSTORE_ENV = "KOMMUNE_KEYSTORE"
SITE_KEY_NAME = "site.key"
AUTHORITY_NAME = "authority.json"
AUDIT_NAME = "audit.sqlite"
LOCK_NAME = "keystore.lock"
_STATE_VERSION = 1
#: How long a second writer waits for the first before it gives up.
LOCK_WAIT_S = 10.0
_LOCK_POLL_S = 0.05


class KeyStoreError(Exception):
    """The key store cannot be used; the message is one line naming the path."""


def default_path(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """`KOMMUNE_KEYSTORE`, else /var/lib/kommune/keystore for root, else the user's
    XDG data folder (as `agent.site.default_state_base` picks the agent's state)."""
    env = os.environ if environ is None else environ
    if env.get(KEYSTORE_ENV):
        return Path(env[KEYSTORE_ENV])
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/kommune/keystore")
    xdg = env.get("XDG_DATA_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "kommune" / "keystore"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "kommune" / "keystore"


def check_private(path: Path, *, directory: bool) -> None:
    """KeyStoreError unless `path` is ours and nobody else may read, write or enter it."""
    try:
        st = path.lstat()
    except OSError as e:
        raise KeyStoreError(f"{path}: {e.strerror or e}") from e
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        raise KeyStoreError(f"{path}: not a {'directory' if directory else 'regular file'}")
    if st.st_uid != os.geteuid():
        raise KeyStoreError(f"{path}: owned by uid {st.st_uid}, not by us (uid {os.geteuid()})")
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        want = "700" if directory else "600"
        raise KeyStoreError(
            f"{path}: mode {mode:04o} lets group or others in; refused (chmod {want} {path})"
        )


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data`: temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT honours the umask; be exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _take_lock(fd: int, path: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise KeyStoreError(
                    f"{path}: another process (pid {holder}) has held the key store for "
                    f"{wait_s:g} s; try again"
                ) from None
            time.sleep(_LOCK_POLL_S)  # writes take milliseconds: wait for the other writer
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


class KeyStore:
    """An open, locked key store. Use as a context manager (closing drops the lock)."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._state: dict[str, Any] | None = None

    @classmethod
    def open(
        cls, path: Path | None = None, *, create: bool = True, wait_s: float = LOCK_WAIT_S
    ) -> KeyStore:
        """The store at `path` (default: `default_path()`), made if missing and `create`;
        waits up to `wait_s` for another writer."""
        path = (path or default_path()).absolute()
        if not path.exists():
            if not create:
                raise KeyStoreError(f"{path}: no key store there")
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.mkdir(mode=0o700)
                os.chmod(path, 0o700)  # mkdir honours the umask
            except FileExistsError:
                pass  # another process made it meanwhile
            except OSError as e:
                raise KeyStoreError(f"{path}: cannot make the key store: {e.strerror or e}") from e
        check_private(path, directory=True)
        lock = path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise KeyStoreError(f"{lock}: {e.strerror or e}") from e
        try:
            check_private(lock, directory=False)
            _take_lock(fd, path, wait_s)
            store = cls(path, fd)
            for name in (SITE_KEY_NAME, AUTHORITY_NAME, AUDIT_NAME):
                if (path / name).exists():
                    check_private(path / name, directory=False)
        except BaseException:
            os.close(fd)
            raise
        return store

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise KeyStoreError(f"{self.path}: key store closed")

    # -- the site key -------------------------------------------------------------------

    def has_site_key(self) -> bool:
        return (self.path / SITE_KEY_NAME).exists()

    def site_key(self, *, generate: bool = True) -> bytes:
        """The site key; made (from the OS CSPRNG) and saved on first use if `generate`."""
        self._check_open()
        file = self.path / SITE_KEY_NAME
        if not file.exists():
            if not generate:
                raise KeyStoreError(
                    f"{file}: no site key yet (`kommune provision lock` or `kommune token issue`"
                    " makes it)"
                )
            key = keys.new_site_key()
            keys.check_site_key(key)
            write_atomic(file, key.hex().encode() + b"\n")
            return key
        check_private(file, directory=False)
        text = file.read_text(encoding="ascii", errors="replace").strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise KeyStoreError(f"{file}: not a hex site key") from None
        try:
            return keys.check_site_key(key)
        except keys.KeyMaterialError as e:
            raise KeyStoreError(f"{file}: {e}") from e

    def lock_keys(self, lock_id: int) -> keys.LockKeys:
        """The three keys of lock `lock_id`, derived from the site key."""
        try:
            return keys.derive_lock_keys(self.site_key(), lock_id)
        except keys.KeyMaterialError as e:
            raise KeyStoreError(str(e)) from e

    # -- the authority's state ------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        if self._state is not None:
            return self._state
        file = self.path / AUTHORITY_NAME
        state: dict[str, Any] = {"version": _STATE_VERSION, "site_id": "", "locks": {}}
        if file.exists():
            check_private(file, directory=False)
            try:
                loaded = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise KeyStoreError(f"{file}: unreadable: {e}") from e
            if not isinstance(loaded, dict) or loaded.get("version") != _STATE_VERSION:
                raise KeyStoreError(f"{file}: not a version {_STATE_VERSION} authority file")
            state.update(loaded)
        self._state = state
        return state

    def _save_state(self) -> None:
        self._check_open()
        state = self._load_state()
        data = json.dumps(state, indent=1, sort_keys=True).encode() + b"\n"
        write_atomic(self.path / AUTHORITY_NAME, data)

    def _lock_state(self, lock_id: int) -> dict[str, Any]:
        locks: dict[str, Any] = self._load_state()["locks"]
        entry: dict[str, Any] = locks.setdefault(
            str(lock_id), {"epoch": 0, "deny_tokens": {}, "deny_holders": [], "issued": {}}
        )
        return entry

    def site_id(self) -> str:
        return str(self._load_state().get("site_id", ""))

    def set_site_id(self, site_id: str) -> None:
        self._load_state()["site_id"] = site_id
        self._save_state()

    def epochs(self) -> dict[int, int]:
        """lock id -> revocation epoch, for `TokenAuthority(epochs=...)`."""
        return {int(k): int(v["epoch"]) for k, v in self._load_state()["locks"].items()}

    def epoch(self, lock_id: int) -> int:
        return self.epochs().get(lock_id, 0)

    def authority(self) -> TokenAuthority:
        """A token authority on the site key, at the stored epochs."""
        return TokenAuthority(self.site_key(), epochs=self.epochs())

    def record_issued(self, issued: IssuedToken, *, issued_at_s: int | None = None) -> None:
        """Keep an issued token's fields (never its keys): for revoking it by id."""
        entry = self._lock_state(issued.lock_id)
        entry["issued"][str(issued.token_id)] = {
            "holder_id": issued.holder_id,
            "not_before_s": issued.not_before_s,
            "not_after_s": issued.not_after_s,
            "rights": issued.rights,
            "epoch": issued.epoch,
            "issued_at_s": int(time.time()) if issued_at_s is None else issued_at_s,
        }
        self._prune(entry, int(time.time()))
        self._save_state()

    def issued(self, lock_id: int) -> dict[int, dict[str, int]]:
        return {int(k): v for k, v in self._lock_state(lock_id)["issued"].items()}

    def revoke_token(self, lock_id: int, token_id: int) -> int | None:
        """Deny-list token `token_id` of lock `lock_id`; returns its end of validity if
        the token is known (the entry can go once it has expired), else None."""
        entry = self._lock_state(lock_id)
        known = entry["issued"].get(str(token_id))
        until = int(known["not_after_s"]) if known else None
        entry["deny_tokens"][str(token_id)] = until
        entry["deny_version"] = int(entry.get("deny_version", 0)) + 1
        self._save_state()
        return until

    def revoke_holder(self, lock_id: int, holder_id: int) -> None:
        entry = self._lock_state(lock_id)
        if holder_id not in entry["deny_holders"]:
            entry["deny_holders"].append(holder_id)
            entry["deny_version"] = int(entry.get("deny_version", 0)) + 1
            self._save_state()

    def revoke_all(self, lock_id: int) -> int:
        """Bump lock `lock_id`'s epoch (every token issued so far is revoked); returns it.
        The deny-list of the old epoch is no longer needed and is cleared."""
        authority = TokenAuthority(self.site_key(), epochs=self.epochs())
        epoch = authority.revoke_all(lock_id)
        entry = self._lock_state(lock_id)
        entry["epoch"] = epoch
        entry["deny_tokens"] = {}
        entry["deny_version"] = int(entry.get("deny_version", 0)) + 1
        self._save_state()
        return epoch

    def raise_epoch(self, lock_id: int, epoch: int) -> bool:
        """Raise lock `lock_id`'s epoch to `epoch` if it is newer (a revocation decided
        elsewhere: the backend's "lock-epoch" downlink); never lowers it. Like
        `revoke_all`, it clears the old epoch's token deny-list. True if it changed."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= 0xFFFF_FFFF:
            raise KeyStoreError(f"epoch {epoch!r} is not a u32")
        entry = self._lock_state(lock_id)
        if epoch <= int(entry["epoch"]):
            return False
        entry["epoch"] = epoch
        entry["deny_tokens"] = {}
        entry["deny_version"] = int(entry.get("deny_version", 0)) + 1
        self._save_state()
        return True

    def deny_version(self, lock_id: int) -> int:
        """Goes up with every change of the lock's deny-list (a lock keeps the newest)."""
        return int(self._lock_state(lock_id).get("deny_version", 0))

    def deny_list(self, lock_id: int) -> dict[str, list[int]]:
        """What the lock must refuse besides old epochs: token ids and holder ids."""
        entry = self._lock_state(lock_id)
        return {
            "tokens": sorted(int(t) for t in entry["deny_tokens"]),
            "holders": sorted(int(h) for h in entry["deny_holders"]),
        }

    @staticmethod
    def _prune(entry: dict[str, Any], now_s: int) -> None:
        # Records of tokens long expired (a day past their end) are no longer needed.
        for table in ("issued", "deny_tokens"):
            for key, value in list(entry[table].items()):
                until = value["not_after_s"] if isinstance(value, dict) else value
                if until is not None and int(until) + 86_400 < now_s:
                    del entry[table][key]

    # -- the audit anchor -------------------------------------------------------------------

    def audit_store(self) -> AuditStore:
        """The audit checker's durable store, `audit.sqlite` (close it when done)."""
        from kommune.edge.keystore.audit import AuditStore

        self._check_open()
        return AuditStore(self.path / AUDIT_NAME)


__all__ = [
    "KEYSTORE_ENV",
    "KeyStore",
    "KeyStoreError",
    "check_private",
    "default_path",
    "write_atomic",
]
