"""`kommune edge run`: logging, the state directory's lock, the parts, the host."""

from __future__ import annotations

import asyncio
from typing import TextIO

from kommune.edge.agent import logs, parts, statedir
from kommune.edge.agent.metrics import Labels, Metric, counter
from kommune.edge.agent.process import Host
from kommune.edge.agent.site import Site


def run_agent(
    site: Site,
    *,
    log_format: logs.Format = "human",
    log_level: str = "info",
    log_stream: TextIO | None = None,
) -> None:
    """Run the agent for `site` until a signal stops it. Raises StateDirError when
    another agent has the state directory, AgentError when a part did not start, the
    agent went down or did not stop cleanly."""
    levels = logs.configure(log_format, log_level, log_stream)
    held = statedir.lock(site.outbox.dir)
    try:
        host = Host(
            stop_timeout_s=site.agent.stop_timeout_s,
            info={"agent": site.agent.id, "site": site.agent.site},
        )

        def logged() -> list[Metric]:
            by_level: dict[Labels, float] = {
                (("level", level),): levels.counts[level] for level in logs.LEVELS
            }
            return [counter("log_messages_total", "log records written, by level", by_level)]

        host.add_metrics(logged)
        parts.build(site, host)
        asyncio.run(host.run())
    finally:
        held.release()
