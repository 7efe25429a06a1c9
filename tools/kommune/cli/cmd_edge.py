"""`kommune edge check|run --site SITE.toml`: check a site file, or run the edge agent."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kommune.cli.errors import CliError

if TYPE_CHECKING:
    from kommune.edge.agent.site import Site

EPILOG = """examples:
  kommune edge check --site /etc/kommune/site.toml     check a site file; say what it sets up
  kommune edge check --site site.toml --json           the site, or every problem, as JSON
  kommune edge run --site /etc/kommune/site.toml       run the agent until SIGTERM or Ctrl-C
  kommune edge run --site site.toml --log-format json  logs as one JSON object per line
  curl -s http://127.0.0.1:9470/healthz                (another terminal) its parts' states
  curl -s http://127.0.0.1:9470/metrics                its counters, for Prometheus

Every key of the site file and its default: docs/edge-agent.md; a sample to start
from: docs/site.example.toml. A problem in it is one line naming the key; --json
lists them all.

SIGTERM, SIGINT or SIGHUP stop the agent: its parts stop in reverse order within
agent.stop_timeout_s (10 s); a second signal ends it at once.

exit status: 0 the file is valid / the agent stopped cleanly; 1 the agent could not
start, went down or did not stop cleanly (the log says why); 2 the site file or the
command line is wrong.
"""


class AgentFailed(CliError):
    """The agent ran (or tried to) and failed: worth a restart by a supervisor."""

    exit_code = 1


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary
        + ". One asyncio process hosts the agent's parts: the health and metrics"
        " endpoint, its heartbeat, and (as they land) outbox, uplink, node links and locks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    check = actions.add_parser(
        "check",
        help="check a site file and summarise it (exit 0 valid, 2 not)",
        description="Check a site file without running anything.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_ = actions.add_parser(
        "run",
        help="run the edge agent for a site until a signal stops it",
        description="Run the edge agent for a site until SIGTERM, SIGINT or SIGHUP.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for action in (check, run_):
        action.add_argument(
            "--site", type=Path, required=True, metavar="SITE.toml", help="the site file"
        )
    check.add_argument(
        "--json", action="store_true", help="print the site (or all its problems) as JSON"
    )
    run_.add_argument(
        "--log-format",
        choices=("human", "json"),
        default="human",
        help="log lines for people (default) or one JSON object per line",
    )
    run_.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least severe records logged (default: info)",
    )
    check.set_defaults(run=run_check)
    run_.set_defaults(run=run_agent)


def _load(path: Path, *, as_json: bool = False) -> Site:
    from kommune.edge.agent.site import SiteError, load

    try:
        return load(path)
    except SiteError as e:
        if as_json:
            doc = {"ok": False, "site": str(path), "problems": list(e.problems)}
            print(json.dumps(doc, indent=2))
        more = len(e.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''}; --json lists all)"
        raise CliError(f"{path}: {e}" + (tail if more else "")) from e


def run_check(args: argparse.Namespace) -> int:
    from kommune.edge.agent.site import as_dict

    site = _load(args.site, as_json=args.json)
    if args.json:
        print(json.dumps({"ok": True, **as_dict(site)}, indent=2))
    else:
        print(_summary(site))
    return 0


def run_agent(args: argparse.Namespace) -> int:
    from kommune.edge.agent.process import AgentError
    from kommune.edge.agent.run import run_agent as run
    from kommune.edge.agent.statedir import StateDirError

    site = _load(args.site)
    try:
        run(site, log_format=args.log_format, log_level=args.log_level)
    except (AgentError, StateDirError) as e:
        raise AgentFailed(str(e)) from e
    return 0


def _summary(site: Site) -> str:
    from kommune.edge.agent.site import SerialLink

    out = site.outbox
    classes = []
    for name in ("audit", "occupancy", "telemetry"):
        policy = getattr(out, name)
        limit = f"at most {policy.max_rows} rows" if policy.max_rows else "no row limit"
        kept = f"{policy.max_age_days:g} days" if policy.max_age_days else "kept until sent"
        classes.append(f"{name}: {limit}, {kept}")
    b = site.broker
    scheme = "mqtts" if b.tls else "mqtt"
    auth = [
        "client certificate" if b.cert else "",
        f"user {b.username}" if b.username else "",
        f"password from {b.password_file}" if b.password_file else "",
        f"CA {b.ca}" if b.ca else ("system CAs" if b.tls else "no TLS"),
    ]
    links = [
        (
            f"{link.id}: serial {link.device} at {link.baud} baud"
            if isinstance(link, SerialLink)
            else f"{link.id}: udp {link.host}:{link.port}"
        )
        + f", {len(link.nodes)} node{'s' if len(link.nodes) != 1 else ''}"
        for link in site.links
    ]
    streets = [f"{s.name}: {len(s.lamps)} lamps, {len(s.bays)} bays" for s in site.streets]
    locks = ", ".join(str(lock.id) for lock in site.locks)
    url = f"http://{site.health.bind}"
    d = site.downlink
    downlink = (
        [f"signed by {d.backend_key}", f"refused when issued over {d.max_age_s:g} s ago"]
        if d.backend_key
        else ["off (no backend_key): nothing is subscribed"]
    )
    rows = [
        ("agent", [f"{site.agent.id} at site {site.agent.site}"]),
        ("outbox", [f"{out.dir}, {out.disk_budget_mb} MB", *classes]),
        (
            "broker",
            [
                f"{scheme}://{b.host}:{b.port}",
                ", ".join(a for a in auth if a),
                f"keepalive {b.keepalive_s} s, session expiry {b.session_expiry_s} s",
            ],
        ),
        ("uplink", _uplink_lines(site)),
        ("downlink", downlink),
        ("links", links or ["none"]),
        ("locks", [f"{len(site.locks)}: {locks}" if site.locks else "none"]),
        ("streets", streets or ["none"]),
        ("health", [f"{url}/healthz and {url}/metrics"]),
    ]
    lines = [f"{site.source}: valid"]
    for label, values in rows:
        lines += [f"  {label if i == 0 else '':<8} {v}" for i, v in enumerate(values)]
    return "\n".join(lines)


def _uplink_lines(site: Site) -> list[str]:
    """The uplink's effective settings: the site's [uplink] over the defaults."""
    from kommune.edge.uplink.batcher import DEFAULT_POLICIES
    from kommune.edge.uplink.config import UplinkConfig

    u = site.uplink
    defaults = UplinkConfig(host="-", site="-", agent="-")
    window = defaults.window if u.window is None else u.window
    deflate = defaults.deflate if u.deflate is None else u.deflate
    drain = defaults.drain_s if u.drain_s is None else u.drain_s
    lines = [f"window {window}, {'deflated' if deflate else 'not deflated'}, drain {drain:g} s"]
    for priority, default in DEFAULT_POLICIES.items():
        b = u.batches.get(priority)
        events = default.max_events if b is None or b.events is None else b.events
        size = default.max_bytes if b is None or b.bytes is None else b.bytes
        age = default.max_age_s if b is None or b.age_s is None else b.age_s
        lines.append(
            f"{priority.name.lower()}: batches of up to {events} events,"
            f" {size / 1024:g} KB, {age:g} s"
        )
    return lines
