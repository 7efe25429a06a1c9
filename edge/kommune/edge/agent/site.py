"""The site file: which agent this is, its outbox, broker, node links, locks and streets.

A TOML file, read with `tomllib` and checked completely before anything starts: every
problem is collected and named by its key (`broker.port: expected an integer 1-65535,
got 'x'`), unknown keys are refused (with a suggestion for a likely typo), and a syntax
error gives its line and column. The result is a tree of frozen dataclasses.

Secrets are never in the file: the broker's password and the TLS key are named by path.
Relative paths count from the folder the site file is in. The full reference of keys
and defaults is docs/edge-agent.md.

    site = load(Path("/etc/kommune/site.toml"))     # SiteError: .problems, str() = first
    site.broker.port, site.outbox.dir, site.streets[0].lamps
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final

from kommune.edge.northbound import Priority

#: Agent ids, site names, link ids and street names: they end up in stream names, MQTT
#: topics and client ids, so they keep to what all of those accept.
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NAME_EXPECTED: Final = "a name of lowercase letters, digits and '-' (1-63, not starting with '-')"
#: Node-link unicast addresses a node may have (protocols/README.md, "Addresses").
NODE_MIN: Final = 0x0001
NODE_MAX: Final = 0xEFFE
#: Lock ids are u32 (protocols/LOCK.md); 0 is not an id.
LOCK_MAX: Final = 0xFFFF_FFFF
BLE_ADDRESS: Final = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")

DEFAULT_HEALTH_HOST: Final = "127.0.0.1"
DEFAULT_HEALTH_PORT: Final = 9470
DEFAULT_DISK_BUDGET_MB: Final = 512
MIN_DISK_BUDGET_MB: Final = 16
DEFAULT_MAX_AGE_DAYS: Final = {"occupancy": 30.0, "telemetry": 7.0}
DEFAULT_KEEPALIVE_S: Final = 60
DEFAULT_SESSION_EXPIRY_S: Final = 7 * 86_400
DEFAULT_STOP_TIMEOUT_S: Final = 10.0
DEFAULT_BAUD: Final = 115_200
#: Downlinks issued longer ago than this are refused as stale (a day).
DEFAULT_DOWNLINK_MAX_AGE_S: Final = 86_400.0


class SiteError(Exception):
    """The site file cannot be used. `problems` lists every one found, each a line that
    starts with the key it is about; the message is the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        if not problems:
            raise ValueError("a SiteError needs at least one problem")
        super().__init__(problems[0])
        self.problems: tuple[str, ...] = tuple(problems)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    #: This agent: part of every event's idempotency key and of its MQTT topics.
    id: str
    #: The site it serves (a town district, a care area): also in the topics.
    site: str
    #: SIGTERM to exit: the parts' stops share this many seconds.
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """How much of one priority class the outbox keeps, and for how long."""

    #: At most this many rows queued (the oldest give way; audit pushes back instead);
    #: None: only the disk budget limits it.
    max_rows: int | None = None
    #: Rows older than this are dropped; None: kept until sent (audit: always None).
    max_age_days: float | None = None

    @property
    def max_age_s(self) -> float | None:
        return None if self.max_age_days is None else self.max_age_days * 86_400


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    #: The agent's state directory: the outbox database and the agent's lock file.
    dir: Path
    disk_budget_mb: int = DEFAULT_DISK_BUDGET_MB
    audit: ClassPolicy = ClassPolicy()
    occupancy: ClassPolicy = ClassPolicy(max_age_days=DEFAULT_MAX_AGE_DAYS["occupancy"])
    telemetry: ClassPolicy = ClassPolicy(max_age_days=DEFAULT_MAX_AGE_DAYS["telemetry"])

    @property
    def budget_bytes(self) -> int:
        return self.disk_budget_mb * 1024 * 1024

    def policy(self, priority: Priority) -> ClassPolicy:
        return {
            Priority.AUDIT: self.audit,
            Priority.OCCUPANCY: self.occupancy,
            Priority.TELEMETRY: self.telemetry,
        }[priority]


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str
    port: int
    tls: bool = True
    #: CA bundle to trust (None: the system's).
    ca: Path | None = None
    #: Client certificate and its key (both or neither).
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    #: A file holding the password (its first line), readable by the agent only.
    password_file: Path | None = None
    keepalive_s: int = DEFAULT_KEEPALIVE_S
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S


@dataclass(frozen=True, slots=True)
class SerialLink:
    """A node link on a UART or RS-485 adapter."""

    id: str
    device: Path
    nodes: tuple[int, ...]
    baud: int = DEFAULT_BAUD


@dataclass(frozen=True, slots=True)
class UdpLink:
    """A node link over UDP, one frame per datagram: the agent listens on host:port."""

    id: str
    host: str
    port: int
    nodes: tuple[int, ...]


Link = SerialLink | UdpLink


@dataclass(frozen=True, slots=True)
class LockConfig:
    id: int
    #: The lock's BLE address, upper case: "C0:FF:EE:00:10:17".
    ble: str


#: The lock manager's defaults ([lock_manager]), seconds.
DEFAULT_LOCK_VISIT_INTERVAL_S: Final = 900.0
DEFAULT_LOCK_MAX_DRIFT_S: Final = 5
DEFAULT_LOCK_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_LOCK_VISIT_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class LockManagerConfig:
    """How the lock manager visits the `[[locks]]` ([lock_manager]; all optional)."""

    #: The key store (site key, epochs, deny-lists, audit anchors); None: the
    #: KOMMUNE_KEYSTORE environment variable, else keystore.default_path().
    keystore: Path | None = None
    #: Each lock is visited this often (and on demand); failed visits are retried
    #: sooner, backing off up to this.
    visit_interval_s: float = DEFAULT_LOCK_VISIT_INTERVAL_S
    #: The lock's clock is set when it is further than this from the agent's.
    max_clock_drift_s: int = DEFAULT_LOCK_MAX_DRIFT_S
    connect_timeout_s: float = DEFAULT_LOCK_CONNECT_TIMEOUT_S
    #: A whole visit (scan, connect, every exchange) ends after this.
    visit_timeout_s: float = DEFAULT_LOCK_VISIT_TIMEOUT_S
    #: The Bumble HCI transport (e.g. "usb:0"); None: KOMMUNE_BLE_TRANSPORT, else the
    #: platform's BLE (BlueZ).
    transport: str | None = None


#: Lamp control defaults ([[streets]]): light output in % of full, seconds.
DEFAULT_IDLE_PERCENT: Final = 20.0
DEFAULT_ON_PERCENT: Final = 100.0
DEFAULT_HOLD_S: Final = 30.0
DEFAULT_FADE_S: Final = 2.0
DEFAULT_AHEAD: Final = 2
DEFAULT_BEHIND: Final = 1
#: Group ids (protocols/README.md, "Addresses"), and groups a node can be in.
GROUP_MAX: Final = 4094
GROUPS_PER_NODE: Final = 8


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A lamp group ([[streets.groups]]): one frame to group address 0xF000 + id sets
    all its lamps."""

    id: int
    lamps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StreetConfig:
    name: str
    #: Node ids of the street's lamps and of its bays' parking sensors (one per bay), in
    #: their order along the street.
    lamps: tuple[int, ...] = ()
    bays: tuple[int, ...] = ()
    #: Presence at a lamp lights it, `ahead` lamps after it and `behind` lamps before it.
    ahead: int = DEFAULT_AHEAD
    behind: int = DEFAULT_BEHIND
    #: Light output (% of full) with nobody there, and when someone is.
    idle_percent: float = DEFAULT_IDLE_PERCENT
    on_percent: float = DEFAULT_ON_PERCENT
    #: Kept on this long after presence ended, then faded to idle over fade_s.
    hold_s: float = DEFAULT_HOLD_S
    fade_s: float = DEFAULT_FADE_S
    groups: tuple[GroupConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class ParkingConfig:
    """The parking scanner ([parking]): BLE reports from the streets' bays."""

    #: The bays' report keys: a JSON object of node id -> 64 hex digits, mode 0600
    #: (kommune.edge.parking_keys.parking_key derives them from the site key).
    keys: Path
    #: The Bumble HCI transport to scan on (e.g. "usb:0"); None: KOMMUNE_BLE_TRANSPORT,
    #: else the platform's BLE (BlueZ).
    transport: str | None = None


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Where /healthz and /metrics are served; port 0 takes a free port (logged)."""

    host: str = DEFAULT_HEALTH_HOST
    port: int = DEFAULT_HEALTH_PORT

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DownlinkConfig:
    """Signed downlinks from the backend (docs/uplink.md, "Downlinks")."""

    #: The backend's Ed25519 public key (PEM); None: no downlinks are subscribed.
    backend_key: Path | None = None
    #: Refuse a document issued longer ago than this, whatever its expiry.
    max_age_s: float = DEFAULT_DOWNLINK_MAX_AGE_S


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """When the uplink closes a batch of one class; None: the uplink's default
    (kommune.edge.uplink.batcher.DEFAULT_POLICIES)."""

    events: int | None = None
    bytes: int | None = None
    age_s: float | None = None


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """How the uplink sends (`[uplink]`); None: the uplink's default."""

    window: int | None = None
    deflate: bool | None = None
    drain_s: float | None = None
    batches: Mapping[Priority, BatchSettings] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Site:
    #: The file this came from (absolute).
    source: Path
    agent: AgentConfig
    outbox: OutboxConfig
    broker: BrokerConfig
    links: tuple[Link, ...] = ()
    locks: tuple[LockConfig, ...] = ()
    streets: tuple[StreetConfig, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
    #: None: no parking scanner (no [parking]).
    parking: ParkingConfig | None = None
    lock_manager: LockManagerConfig = field(default_factory=LockManagerConfig)


def read_password(broker: BrokerConfig) -> str | None:
    """The password in broker.password_file (its first line), None if there is none;
    SiteError naming the key if the file cannot be read."""
    if broker.password_file is None:
        return None
    try:
        text = broker.password_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SiteError([f"broker.password_file: {broker.password_file}: {why}"]) from e
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise SiteError([f"broker.password_file: {broker.password_file}: the first line is empty"])
    return lines[0]


def default_state_base(environ: Mapping[str, str], euid: int) -> Path:
    """Where agent state goes when the site file does not say: systemd's StateDirectory=,
    else /var/lib/kommune for root, else the user's XDG state folder."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if euid == 0:
        return Path("/var/lib/kommune")
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "kommune"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "kommune"


def load(path: Path, *, environ: Mapping[str, str] | None = None, euid: int | None = None) -> Site:
    """Read and check the site file at `path`; SiteError lists what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SiteError([f"cannot read it: {e.strerror or e}"]) from e
    return parse(raw, source=path, environ=environ, euid=euid)


def parse(
    raw: bytes,
    *,
    source: Path,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> Site:
    """Check a site file's bytes; `source` is where it lives (relative paths count from
    its folder). `environ`/`euid` decide the default outbox folder (default: this
    process's)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SiteError([f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})"]) from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SiteError([_syntax_problem(str(e))]) from e
    return from_document(doc, source=source, environ=environ, euid=euid)


def from_document(
    doc: Mapping[str, Any],
    *,
    source: Path,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> Site:
    """Check a site file already read into TOML's values (as `tomllib` gives them)."""
    source = source.absolute()
    problems: list[str] = []
    site = _Reader(
        problems,
        base=source.parent,
        environ=os.environ if environ is None else environ,
        euid=os.geteuid() if euid is None else euid,
    ).site(_Table(doc, "", problems), source)
    if problems:
        raise SiteError(problems)
    return site


def _syntax_problem(message: str) -> str:
    """tomllib's "Invalid value (at line 3, column 8)" as "line 3, column 8: invalid value"."""
    match = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", message)
    if not match:
        return f"not valid TOML: {message}"
    what, where = match.groups()
    where = "end of file" if where == "end of document" else where
    return f"{where}: {what[:1].lower()}{what[1:]} (not valid TOML)"


def _shown(value: object) -> str:
    """A value as the error message shows it: TOML's words for types, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return f"a date/time ({value})"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Table:
    """One TOML table being read: hands out values by key, records problems with the
    key's full name, and at the end refuses the keys nobody asked for."""

    def __init__(self, data: Mapping[str, Any], path: str, problems: list[str]) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.asked: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{self.key(name)}: {text}")

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str) -> Any:
        self.asked.append(name)
        return self.data.get(name)

    def finish(self) -> None:
        for name in self.data:
            if name in self.asked:
                continue
            close = difflib.get_close_matches(name, self.asked, n=1, cutoff=0.7)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            what = "table" if isinstance(self.data[name], dict) else "key"
            self.problem(name, f"unknown {what}{hint}")

    def table(self, name: str, *, required: str | None = None) -> _Table | None:
        """The sub-table `name`; None if absent (a problem if `required` says what it is)."""
        value = self.get(name)
        if value is None:
            if required:
                self.problem(name, f"required: the [{self.key(name)}] table, with {required}")
            return None
        if not isinstance(value, dict):
            self.problem(name, f"expected a table, got {_shown(value)}")
            return None
        return _Table(value, self.key(name), self.problems)

    def tables(self, name: str) -> list[_Table]:
        """An array of tables ([[name]]); entries named name[1], name[2], ..."""
        value = self.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.problem(name, f"expected an array of tables ([[{name}]]), got {_shown(value)}")
            return []
        return [_Table(v, f"{self.key(name)}[{i}]", self.problems) for i, v in enumerate(value, 1)]

    def string(
        self,
        name: str,
        *,
        required: str | None = None,
        pattern: re.Pattern[str] | None = None,
        expected: str = "a string",
    ) -> str | None:
        value = self.get(name)
        if value is None:
            if required:
                self.problem(name, f"required: {required}")
            return None
        if not isinstance(value, str) or not value or (pattern and not pattern.fullmatch(value)):
            self.problem(name, f"expected {expected}, got {_shown(value)}")
            return None
        return value

    def integer(self, name: str, low: int, high: int, *, required: str | None = None) -> int | None:
        value = self.get(name)
        if value is None:
            if required:
                self.problem(name, f"required: {required}")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(name, f"expected an integer {low}-{high}, got {_shown(value)}")
            return None
        return value

    def number(self, name: str, low: float, high: float) -> float | None:
        value = self.get(name)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (low <= value <= high)
        ):
            self.problem(name, f"expected a number {low:g}-{high:g}, got {_shown(value)}")
            return None
        return float(value)

    def boolean(self, name: str) -> bool | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.problem(name, f"expected true or false, got {_shown(value)}")
            return None
        return value

    def integers(self, name: str, low: int, high: int, what: str) -> tuple[int, ...] | None:
        """An array of distinct integers in low..high."""
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            self.problem(name, f"expected an array of {what}, got {_shown(value)}")
            return None
        seen: set[int] = set()
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
                self.problem(
                    name, f"expected {what}: integers {low}-{high}, got {_shown(item)} in the array"
                )
                return None
            if item in seen:
                self.problem(name, f"{item} is listed twice")
                return None
            seen.add(item)
        return tuple(value)


@dataclass
class _Reader:
    problems: list[str]
    base: Path
    environ: Mapping[str, str]
    euid: int
    #: [parking] is there: a street's bays may be BLE sensors on no link.
    ble_bays: bool = False

    def path(self, table: _Table, name: str, what: str) -> Path | None:
        text = table.string(name, expected=f"the path of {what}")
        if text is None:
            return None
        if "\0" in text:
            table.problem(name, f"expected the path of {what}, got {_shown(text)}")
            return None
        return self.base / Path(text).expanduser()

    def site(self, top: _Table, source: Path) -> Site:
        agent = self.agent(top.table("agent", required="id and site"))
        outbox = self.outbox(top.table("outbox"), agent.id)
        broker = self.broker(top.table("broker", required="at least host"))
        links = tuple(link for t in top.tables("links") if (link := self.link(t)) is not None)
        locks = tuple(lock for t in top.tables("locks") if (lock := self.lock(t)) is not None)
        lock_manager = self.lock_manager(top.table("lock_manager"))
        streets = tuple(s for t in top.tables("streets") if (s := self.street(t)) is not None)
        health = self.health(top.table("health"))
        downlink = self.downlink(top.table("downlink"))
        uplink = self.uplink(top.table("uplink"))
        parking = self.parking(top.table("parking"))
        self.ble_bays = parking is not None  # bays may report over BLE, on no link
        top.finish()
        self.check_links(links)
        self.check_locks(locks)
        self.check_streets(streets, links)
        return Site(
            source,
            agent,
            outbox,
            broker,
            links,
            locks,
            streets,
            health,
            downlink,
            uplink,
            parking,
            lock_manager=lock_manager,
        )

    def agent(self, t: _Table | None) -> AgentConfig:
        if t is None:
            return AgentConfig("", "")
        ident = t.string(
            "id",
            required=f"this agent's id, {NAME_EXPECTED}",
            pattern=NAME_PATTERN,
            expected=NAME_EXPECTED,
        )
        site = t.string(
            "site",
            required=f"the site's name, {NAME_EXPECTED}",
            pattern=NAME_PATTERN,
            expected=NAME_EXPECTED,
        )
        stop = t.number("stop_timeout_s", 1, 300)
        t.finish()
        return AgentConfig(ident or "", site or "", stop or DEFAULT_STOP_TIMEOUT_S)

    def outbox(self, t: _Table | None, agent_id: str) -> OutboxConfig:
        default_dir = default_state_base(self.environ, self.euid) / (agent_id or "agent")
        if t is None:
            return OutboxConfig(default_dir)
        where = self.path(t, "dir", "the agent's state folder")
        budget = t.integer("disk_budget_mb", MIN_DISK_BUDGET_MB, 1 << 20)
        budget = DEFAULT_DISK_BUDGET_MB if budget is None else budget
        audit = self.class_policy(t.table("audit"), "audit")
        occupancy = self.class_policy(t.table("occupancy"), "occupancy")
        telemetry = self.class_policy(t.table("telemetry"), "telemetry")
        t.finish()
        return OutboxConfig(where or default_dir, budget, audit, occupancy, telemetry)

    def class_policy(self, t: _Table | None, name: str) -> ClassPolicy:
        max_age = DEFAULT_MAX_AGE_DAYS.get(name)
        if t is None:
            return ClassPolicy(None, max_age)
        rows = t.integer("max_rows", 1, 1_000_000_000)
        if name == "audit":
            if t.has("max_age_days"):
                t.get("max_age_days")
                t.problem("max_age_days", "audit entries are never dropped by age; remove it")
        else:
            days = t.number("max_age_days", 0.01, 3650)
            max_age = max_age if days is None else days
        t.finish()
        return ClassPolicy(rows, max_age)

    def broker(self, t: _Table | None) -> BrokerConfig:
        if t is None:
            return BrokerConfig("", 0)
        host = t.string(
            "host",
            required="the broker's host name or IP address",
            expected="a host name or IP address (no scheme, no port)",
        )
        if host is not None and not _is_host(host):
            t.problem(
                "host",
                f"expected a host name or IP address (no scheme, no port), got {_shown(host)}",
            )
        tls = t.boolean("tls")
        tls = True if tls is None else tls
        port = t.integer("port", 1, 65535)
        files = {
            "ca": self.path(t, "ca", "a CA certificate bundle (PEM)"),
            "cert": self.path(t, "cert", "the agent's client certificate (PEM)"),
            "key": self.path(t, "key", "the client certificate's private key (PEM)"),
        }
        if not tls:
            for name, value in files.items():
                if value is not None:
                    t.problem(name, "only with TLS: set broker.tls = true or remove this key")
        if (files["cert"] is None) != (files["key"] is None) and tls:
            missing = "key" if files["cert"] is not None else "cert"
            if not t.has(missing):
                t.problem(
                    missing, "required with broker." + ("cert" if missing == "key" else "key")
                )
        username = t.string("username", expected="a user name")
        if t.has("password"):
            t.get("password")
            t.problem(
                "password",
                "secrets stay out of the site file: put the password in a file only the agent "
                "can read and give its path as broker.password_file",
            )
        password_file = self.path(t, "password_file", "a file holding the password")
        if password_file is not None and username is None and not t.has("username"):
            t.problem("password_file", "needs broker.username (a password goes with a user)")
        keepalive = t.integer("keepalive_s", 5, 65535)
        expiry = t.integer("session_expiry_s", 0, 0xFFFF_FFFF)
        t.finish()
        return BrokerConfig(
            host=host or "",
            port=port if port is not None else (8883 if tls else 1883),
            tls=tls,
            ca=files["ca"],
            cert=files["cert"],
            key=files["key"],
            username=username,
            password_file=password_file,
            keepalive_s=DEFAULT_KEEPALIVE_S if keepalive is None else keepalive,
            session_expiry_s=DEFAULT_SESSION_EXPIRY_S if expiry is None else expiry,
        )

    def link(self, t: _Table) -> Link | None:
        ident = t.string(
            "id",
            required=f"the link's name, {NAME_EXPECTED}",
            pattern=NAME_PATTERN,
            expected=NAME_EXPECTED,
        )
        nodes = t.integers("nodes", NODE_MIN, NODE_MAX, "node ids")
        if nodes is None and not t.has("nodes"):
            t.problem("nodes", "required: the ids of the nodes on this link, e.g. [1, 2, 3]")
        elif nodes == ():
            t.problem("nodes", "expected at least one node id")
        link: Link | None = None
        if t.has("serial") and t.has("udp"):
            t.get("udp")
            t.problem("udp", "a link is serial or udp, not both")
        elif t.has("udp"):
            endpoint = t.string("udp", expected="HOST:PORT to listen on, e.g. '0.0.0.0:47000'")
            address = _endpoint(endpoint, allow_zero=False) if endpoint else None
            if endpoint is not None and address is None:
                t.problem("udp", f"expected HOST:PORT (port 1-65535), got {_shown(endpoint)}")
            if t.has("baud"):
                t.get("baud")
                t.problem("baud", "only for a serial link")
            if address is not None and ident is not None:
                link = UdpLink(ident or "", address[0], address[1], nodes or ())
        else:
            device = self.path(t, "serial", "the serial device, e.g. /dev/ttyUSB0")
            if device is None and not t.has("serial"):
                t.problem("serial", "required: a serial device, or udp = 'HOST:PORT' instead")
            baud = t.integer("baud", 300, 4_000_000)
            if device is not None and ident is not None:
                link = SerialLink(ident or "", device, nodes or (), baud or DEFAULT_BAUD)
        t.finish()
        return link

    def lock(self, t: _Table) -> LockConfig | None:
        ident = t.integer("id", 1, LOCK_MAX, required=f"the lock's id, 1-{LOCK_MAX}")
        ble = t.string(
            "ble",
            required="the lock's BLE address, e.g. 'C0:FF:EE:00:10:17'",
            pattern=BLE_ADDRESS,
            expected="a BLE address like 'C0:FF:EE:00:10:17'",
        )
        t.finish()
        return None if ident is None or ble is None else LockConfig(ident, ble.upper())

    def lock_manager(self, t: _Table | None) -> LockManagerConfig:
        if t is None:
            return LockManagerConfig()
        keystore = self.path(t, "keystore", "the key store folder (kommune provision, token)")
        interval = t.number("visit_interval_s", 1, 7 * 86_400)
        drift = t.integer("max_clock_drift_s", 1, 3600)
        connect = t.number("connect_timeout_s", 1, 300)
        visit = t.number("visit_timeout_s", 5, 3600)
        transport = t.string("transport", expected="a Bumble transport spec, e.g. 'usb:0'")
        t.finish()
        connect = DEFAULT_LOCK_CONNECT_TIMEOUT_S if connect is None else connect
        visit = DEFAULT_LOCK_VISIT_TIMEOUT_S if visit is None else visit
        if visit < connect:
            t.problem("visit_timeout_s", f"must be at least connect_timeout_s ({connect:g})")
        return LockManagerConfig(
            keystore,
            DEFAULT_LOCK_VISIT_INTERVAL_S if interval is None else interval,
            DEFAULT_LOCK_MAX_DRIFT_S if drift is None else drift,
            connect,
            visit,
            transport,
        )

    def street(self, t: _Table) -> StreetConfig | None:
        name = t.string(
            "name",
            required=f"the street's name, {NAME_EXPECTED}",
            pattern=NAME_PATTERN,
            expected=NAME_EXPECTED,
        )
        lamps = t.integers("lamps", NODE_MIN, NODE_MAX, "lamp node ids")
        bays = t.integers("bays", NODE_MIN, NODE_MAX, "parking sensor node ids")
        well_typed = (lamps is not None or not t.has("lamps")) and (
            bays is not None or not t.has("bays")
        )
        if well_typed and not lamps and not bays:
            t.problem("lamps", "a street needs lamps, bays or both")
        ahead = t.integer("ahead", 0, 64)
        behind = t.integer("behind", 0, 64)
        idle = t.number("idle_percent", 0, 100)
        on = t.number("on_percent", 0.1, 100)
        idle = DEFAULT_IDLE_PERCENT if idle is None else idle
        on = DEFAULT_ON_PERCENT if on is None else on
        if idle > on and (t.has("idle_percent") or t.has("on_percent")):
            which = "on_percent" if t.has("on_percent") else "idle_percent"
            t.problem(which, f"on_percent ({on:g}) must be at least idle_percent ({idle:g})")
        hold = t.number("hold_s", 0, 3600)
        fade = t.number("fade_s", 0, 65.535)
        groups = tuple(g for gt in t.tables("groups") if (g := self.group(gt, lamps)) is not None)
        t.finish()
        if name is None:
            return None
        return StreetConfig(
            name,
            lamps or (),
            bays or (),
            DEFAULT_AHEAD if ahead is None else ahead,
            DEFAULT_BEHIND if behind is None else behind,
            idle,
            on,
            DEFAULT_HOLD_S if hold is None else hold,
            DEFAULT_FADE_S if fade is None else fade,
            groups,
        )

    def group(self, t: _Table, street_lamps: tuple[int, ...] | None) -> GroupConfig | None:
        ident = t.integer("id", 0, GROUP_MAX, required=f"the group's id, 0-{GROUP_MAX}")
        lamps = t.integers("lamps", NODE_MIN, NODE_MAX, "lamp node ids")
        if lamps is None and not t.has("lamps"):
            t.problem("lamps", "required: the lamps of the group, e.g. [1, 2, 3]")
        elif lamps == ():
            t.problem("lamps", "expected at least one lamp")
        elif lamps is not None:
            for lamp in lamps:
                if lamp not in (street_lamps or ()):
                    t.problem("lamps", f"lamp {lamp} is not one of the street's lamps")
        t.finish()
        return None if ident is None or not lamps else GroupConfig(ident, lamps)

    def parking(self, t: _Table | None) -> ParkingConfig | None:
        if t is None:
            return None
        keys = self.path(t, "keys", "the bays' report keys (JSON, mode 0600)")
        if keys is None and not t.has("keys"):
            t.problem("keys", "required: the path of the bays' report keys (JSON)")
        transport = t.string("transport", expected="a Bumble transport spec, e.g. 'usb:0'")
        t.finish()
        return None if keys is None else ParkingConfig(keys, transport)

    def health(self, t: _Table | None) -> HealthConfig:
        if t is None:
            return HealthConfig()
        bind = t.string("bind", expected="HOST:PORT, e.g. '127.0.0.1:9470'")
        t.finish()
        if bind is None:
            return HealthConfig()
        address = _endpoint(bind, allow_zero=True)
        if address is None:
            t.problem("bind", f"expected HOST:PORT (port 0-65535), got {_shown(bind)}")
            return HealthConfig()
        return HealthConfig(*address)

    def downlink(self, t: _Table | None) -> DownlinkConfig:
        if t is None:
            return DownlinkConfig()
        key = self.path(t, "backend_key", "the backend's Ed25519 public key (PEM)")
        if key is None and not t.has("backend_key"):
            t.problem(
                "backend_key",
                "required: the path of the backend's Ed25519 public key (PEM), "
                "or leave out [downlink] for no downlinks",
            )
        max_age = t.number("max_age_s", 60, 7 * 86_400)
        t.finish()
        return DownlinkConfig(key, DEFAULT_DOWNLINK_MAX_AGE_S if max_age is None else max_age)

    def uplink(self, t: _Table | None) -> UplinkSettings:
        if t is None:
            return UplinkSettings()
        window = t.integer("window", 1, 65535)
        deflate = t.boolean("deflate")
        drain = t.number("drain_s", 0, 600)
        batches: dict[Priority, BatchSettings] = {}
        for priority in Priority:
            b = t.table(priority.name.lower())
            if b is not None:
                batches[priority] = BatchSettings(
                    b.integer("batch_events", 1, 100_000),
                    b.integer("batch_bytes", 64, 1024 * 1024),
                    b.number("batch_age_s", 0, 86_400),
                )
                b.finish()
        t.finish()
        return UplinkSettings(window, deflate, drain, batches)

    def check_links(self, links: Sequence[Link]) -> None:
        ids: dict[str, int] = {}
        nodes: dict[int, str] = {}
        for i, link in enumerate(links, 1):
            if link.id in ids:
                self.problems.append(f"links[{i}].id: {link.id!r} is also links[{ids[link.id]}]")
            ids.setdefault(link.id, i)
            for node in link.nodes:
                if node in nodes:
                    self.problems.append(
                        f"links[{i}].nodes: node {node} is also on link {nodes[node]!r}"
                    )
                nodes.setdefault(node, link.id)

    def check_locks(self, locks: Sequence[LockConfig]) -> None:
        ids: dict[int, int] = {}
        addresses: dict[str, int] = {}
        for i, lock in enumerate(locks, 1):
            if lock.id in ids:
                self.problems.append(f"locks[{i}].id: {lock.id} is also locks[{ids[lock.id]}]")
            if lock.ble in addresses:
                self.problems.append(
                    f"locks[{i}].ble: {lock.ble} is also locks[{addresses[lock.ble]}]"
                )
            ids.setdefault(lock.id, i)
            addresses.setdefault(lock.ble, i)

    def check_streets(self, streets: Sequence[StreetConfig], links: Sequence[Link]) -> None:
        on_links = {node for link in links for node in link.nodes}
        names: dict[str, int] = {}
        placed: dict[int, str] = {}
        group_ids: dict[int, str] = {}
        in_groups: dict[int, int] = {}
        for i, street in enumerate(streets, 1):
            if street.name in names:
                self.problems.append(
                    f"streets[{i}].name: {street.name!r} is also streets[{names[street.name]}]"
                )
            names.setdefault(street.name, i)
            for group in street.groups:
                if group.id in group_ids:
                    self.problems.append(
                        f"streets[{i}].groups: group {group.id} is also in {group_ids[group.id]}"
                    )
                group_ids.setdefault(group.id, f"street {street.name!r}")
                for lamp in group.lamps:
                    in_groups[lamp] = in_groups.get(lamp, 0) + 1
                    if in_groups[lamp] == GROUPS_PER_NODE + 1:
                        self.problems.append(
                            f"streets[{i}].groups: lamp {lamp} is in more than"
                            f" {GROUPS_PER_NODE} groups (a node keeps {GROUPS_PER_NODE})"
                        )
            for key, ids in (("lamps", street.lamps), ("bays", street.bays)):
                for node in ids:
                    where = f"streets[{i}].{key}: node {node}"
                    if node not in on_links and not (key == "bays" and self.ble_bays):
                        self.problems.append(f"{where} is on no link (add it to a link's nodes)")
                    if node in placed:
                        self.problems.append(f"{where} is also in {placed[node]}")
                    placed.setdefault(node, f"street {street.name!r} ({key})")


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in labels
    )


def _endpoint(text: str, *, allow_zero: bool) -> tuple[str, int] | None:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); None if it is not one."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if not match:
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not (0 if allow_zero else 1) <= port <= 65535 or not _is_host(host):
        return None
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return host, port


def as_dict(site: Site) -> dict[str, Any]:
    """The site as plain JSON values (paths as strings, links with their kind)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, SerialLink | UdpLink):
            kind = "serial" if isinstance(value, SerialLink) else "udp"
            return {"kind": kind, **plain_fields(value)}
        if hasattr(value, "__dataclass_fields__"):
            return plain_fields(value)
        if isinstance(value, Mapping):  # per class: {"telemetry": ...}
            return {
                k.name.lower() if isinstance(k, Priority) else str(k): plain(v)
                for k, v in value.items()
            }
        return value

    def plain_fields(value: Any) -> dict[str, Any]:
        return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}

    doc: dict[str, Any] = plain(site)
    doc["health"]["bind"] = site.health.bind
    return doc
