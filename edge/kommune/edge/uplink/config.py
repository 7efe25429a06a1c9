"""What the uplink needs to know: the broker, who we are, TLS, and how to batch.

Checked when an `Uplink` is made (and by `UplinkConfig.check()`, for `kommune edge
check`): a bad setting is one `UplinkConfigError` whose message is one line naming
the setting, e.g. ``tls.cert: /etc/kommune/edge.crt: no such file``.

Topics: every batch of class C goes to ``<prefix>/<site>/<agent>/<c>`` with c one of
``audit``, ``occupancy``, ``telemetry`` (prefix ``kommune``). Downlinks come on
``<prefix>/<site>/<agent>/down/<kind>`` and ``<prefix>/<site>/all/down/<kind>`` (every
agent of the site); the uplink subscribes to both with ``+`` for the kind.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kommune.edge.northbound import Priority

from .backoff import BackoffPolicy
from .batcher import DEFAULT_POLICIES, BatchPolicy

#: The topic level of downlinks for every agent of a site.
ALL_AGENTS_LEVEL = "all"
#: A topic level we put in a topic name: no "/", "+", "#" or "$".
_LEVEL = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class TlsSocket(ssl.SSLSocket):
    """The uplink's TLS socket. It closes itself when its handshake fails (paho wraps
    and handshakes in one call and drops the socket when that raises, which would leave
    it to the garbage collector), and keeps the error that ended a read in `failure`
    (paho logs it and says only "connection lost"; with TLS 1.3 a broker refuses our
    certificate with an alert after the handshake, e.g. "unknown ca")."""

    failure: ssl.SSLError | None = None

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self.failure = exc
            raise


class UplinkConfigError(ValueError):
    """A setting of the uplink that cannot work; the message is one line."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS to the broker. `ca`: the CA bundle that signed the broker's certificate
    (None: the system's); `cert`/`key`: our client certificate and its key (PEM; the key
    may sit in the certificate file)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    #: Check that the broker's certificate names the host we connect to.
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """The client context, or `UplinkConfigError` naming the file that is wrong."""
        for name, path in (("tls.ca", self.ca), ("tls.cert", self.cert), ("tls.key", self.key)):
            if path is not None:
                _readable(name, Path(path))
        if self.key is not None and self.cert is None:
            raise UplinkConfigError("tls.key is set but tls.cert is not: a key needs its cert")
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        except ssl.SSLError as exc:  # pragma: no cover - the system's CA store
            raise UplinkConfigError(f"tls: the system's CA store: {_reason(exc)}") from None
        if self.ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.ca))
            except (ssl.SSLError, ValueError) as exc:
                raise UplinkConfigError(
                    f"tls.ca: {self.ca}: not a PEM CA certificate ({_reason(exc)})"
                ) from None
        if self.cert is not None:
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
            except ssl.SSLError as exc:
                if "KEY_VALUES_MISMATCH" in str(exc):
                    what = f"tls.key: {self.key} is not the key of tls.cert {self.cert}"
                else:
                    files = f"{self.cert}" + (f" / {self.key}" if self.key else "")
                    what = f"tls.cert: {files}: not a PEM certificate and key ({_reason(exc)})"
                raise UplinkConfigError(what) from None
        ctx.check_hostname = self.check_hostname
        ctx.sslsocket_class = TlsSocket
        return ctx


def _readable(name: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise UplinkConfigError(f"{name}: {path}: no such file") from None
    except IsADirectoryError:
        raise UplinkConfigError(f"{name}: {path}: is a directory, not a file") from None
    except OSError as exc:
        raise UplinkConfigError(f"{name}: {path}: {exc.strerror or exc}") from None


def _reason(exc: Exception) -> str:
    """The readable part of an ssl error: "PEM lib", not "[SSL] PEM lib (_ssl.c:3905)"."""
    reason = getattr(exc, "reason", None) or str(exc)
    reason = re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(reason))
    return " ".join(reason.split())


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """The uplink's settings. Only `host`, `site` and `agent` have no default."""

    host: str
    site: str
    agent: str
    #: None: 8883 with TLS, 1883 without.
    port: int | None = None
    tls: TlsConfig | None = None
    username: str | None = None
    password: str | None = None
    #: The MQTT client id; None: ``kommune-<site>-<agent>``. It names the persistent
    #: session, so it must stay the same across restarts and be unique per broker.
    client_id: str | None = None
    topic_prefix: str = "kommune"
    keepalive_s: int = 60
    #: How long the broker keeps our session while we are away (MQTT 5 Session Expiry).
    session_expiry_s: int = 7 * 24 * 3600
    #: Publishes that may wait for their PUBACK at once (capped by the broker's
    #: Receive Maximum).
    window: int = 8
    #: Deflate each pack when that makes it smaller.
    deflate: bool = True
    #: Treat a PUBACK "no matching subscribers" (0x10) as not delivered: keep the rows
    #: until a subscriber (a backend's persistent session) exists.
    require_subscriber: bool = False
    connect_timeout_s: float = 10.0
    #: How long `stop()` keeps publishing what it holds before it releases the rest.
    drain_s: float = 5.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    policies: Mapping[Priority, BatchPolicy] = field(default_factory=lambda: DEFAULT_POLICIES)

    def check(self) -> ssl.SSLContext | None:
        """Raise `UplinkConfigError` for the first bad setting; the TLS context if any."""
        if not self.host or any(c.isspace() for c in self.host):
            raise UplinkConfigError(f"host: {self.host!r} is not a host name or address")
        for name, level in (("site", self.site), ("agent", self.agent)):
            if not _LEVEL.fullmatch(level):
                raise UplinkConfigError(f"{name}: {level!r} is not [a-z0-9][a-z0-9-]{{0,62}}")
        if not _LEVEL.fullmatch(self.topic_prefix):
            raise UplinkConfigError(f"topic_prefix: {self.topic_prefix!r} is not one level")
        if not 0 < self.resolved_port <= 65535:
            raise UplinkConfigError(f"port: {self.resolved_port} is not a TCP port")
        if self.password is not None and self.username is None:
            raise UplinkConfigError("password is set but username is not")
        if not 1 <= self.window <= 65535:
            raise UplinkConfigError(f"window: {self.window} is not in 1..65535")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            raise UplinkConfigError(f"session_expiry_s: {self.session_expiry_s} out of range")
        if not 0 < self.keepalive_s <= 65535:
            raise UplinkConfigError(f"keepalive_s: {self.keepalive_s} is not in 1..65535")
        if not self.connect_timeout_s > 0 or not self.drain_s >= 0:
            raise UplinkConfigError("connect_timeout_s must be > 0 and drain_s >= 0")
        if any(c in (self.client_id or "") for c in "+#/"):
            raise UplinkConfigError(f"client_id: {self.client_id!r} has +, # or /")
        return self.tls.context() if self.tls is not None else None

    @property
    def resolved_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883

    @property
    def resolved_client_id(self) -> str:
        return self.client_id or f"kommune-{self.site}-{self.agent}"

    def downlink_filters(self) -> tuple[str, str]:
        """What the uplink subscribes to for downlinks: this agent's and the site's."""
        site = f"{self.topic_prefix}/{self.site}"
        return f"{site}/{self.agent}/down/+", f"{site}/{ALL_AGENTS_LEVEL}/down/+"

    def topic(self, priority: Priority) -> str:
        """Where batches of `priority` go: ``kommune/<site>/<agent>/<class>``."""
        return f"{self.topic_prefix}/{self.site}/{self.agent}/{priority.name.lower()}"
