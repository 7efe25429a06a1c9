"""The MQTT uplink as a part of the agent: it takes rows from the outbox part (built and
started before it) and stops before the outbox does, after draining what it holds. With
a downlink part that is enabled, it subscribes to downlinks and hands them to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kommune.edge.agent.metrics import Metric, counter, gauge
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.agent.site import Site, read_password
from kommune.edge.uplink.batcher import DEFAULT_POLICIES, BatchPolicy
from kommune.edge.uplink.config import TlsConfig, UplinkConfig
from kommune.edge.uplink.mqtt import Uplink

if TYPE_CHECKING:
    from kommune.edge.agent.downlink_part import DownlinkPart


def uplink_config(site: Site) -> UplinkConfig:
    """The uplink's settings from the site file's [broker], [uplink] and [agent] tables;
    what [uplink] leaves out keeps the uplink's default."""
    broker = site.broker
    tuning = site.uplink
    policies = dict(DEFAULT_POLICIES)
    for priority, batch in tuning.batches.items():
        default = DEFAULT_POLICIES[priority]
        policies[priority] = BatchPolicy(
            max_events=default.max_events if batch.events is None else batch.events,
            max_bytes=default.max_bytes if batch.bytes is None else batch.bytes,
            max_age_s=default.max_age_s if batch.age_s is None else batch.age_s,
        )
    defaults = UplinkConfig(host=broker.host, site=site.agent.site, agent=site.agent.id)
    return UplinkConfig(
        host=broker.host,
        site=site.agent.site,
        agent=site.agent.id,
        port=broker.port,
        tls=TlsConfig(broker.ca, broker.cert, broker.key) if broker.tls else None,
        username=broker.username,
        password=read_password(broker),
        keepalive_s=broker.keepalive_s,
        session_expiry_s=broker.session_expiry_s,
        window=defaults.window if tuning.window is None else tuning.window,
        deflate=defaults.deflate if tuning.deflate is None else tuning.deflate,
        drain_s=defaults.drain_s if tuning.drain_s is None else tuning.drain_s,
        policies=policies,
    )


#: What /healthz says when the site file sets no backend key.
DOWNLINKS_OFF = "off: no [downlink] backend_key in the site file, nothing is subscribed"


class UplinkPart:
    name = "uplink"

    def __init__(
        self, site: Site, outbox: OutboxPart, downlinks: DownlinkPart | None = None
    ) -> None:
        self.config = uplink_config(site)
        self.config.check()  # a bad setting fails the start with its name, not later
        self._outbox = outbox
        self._downlinks = downlinks if downlinks is not None and downlinks.enabled else None
        self._uplink: Uplink | None = None

    async def start(self) -> None:
        handler = self._downlinks.handle if self._downlinks is not None else None
        self._uplink = Uplink(self.config, self._outbox.outbox, on_downlink=handler)
        self._uplink.start()

    async def stop(self) -> None:
        uplink, self._uplink = self._uplink, None
        if uplink is not None:
            await uplink.stop()

    def health(self) -> dict[str, Any]:
        if self._uplink is None:
            return {"connected": False, "downlinks_subscribed": False}
        state = self._uplink.state
        return {
            "connected": state.connected,
            "broker": f"{self.config.host}:{self.config.resolved_port}",
            "acked_rows": state.acked_rows,
            "downlinks_subscribed": state.downlink_subscribed,
            **({} if self._downlinks is not None else {"downlinks": DOWNLINKS_OFF}),
            "last_error": state.last_error,
        }

    def metrics(self) -> list[Metric]:
        if self._uplink is None:
            return []
        s = self._uplink.state
        return [
            gauge("uplink_connected", "1 while connected to the broker", float(s.connected)),
            counter("uplink_connections_total", "connections that got a CONNACK", s.connections),
            counter("uplink_reconnects_total", "connections after the first", s.reconnects),
            counter("uplink_connect_failures_total", "failed connects", s.connect_failures),
            counter("uplink_publishes_total", "PUBLISH packets sent", s.publishes),
            counter(
                "uplink_acked_publishes_total", "publishes the broker acked", s.acked_publishes
            ),
            counter("uplink_acked_rows_total", "rows delivered (after PUBACK)", s.acked_rows),
            counter("uplink_released_rows_total", "rows given back unsent", s.released_rows),
            gauge("uplink_in_flight", "publishes waiting for their PUBACK", s.in_flight),
            gauge(
                "uplink_downlinks_subscribed",
                "1 while subscribed to downlinks",
                float(s.downlink_subscribed),
            ),
            counter("uplink_downlinks_received_total", "downlink messages", s.downlinks_received),
            counter(
                "uplink_downlink_handler_errors_total",
                "downlink messages whose handler raised",
                s.downlink_handler_errors,
            ),
            counter(
                "uplink_payload_bytes_total", "payload bytes of acked publishes", s.payload_bytes
            ),
            counter(
                "uplink_wire_bytes_total", "PUBLISH+PUBACK bytes of acked publishes", s.wire_bytes
            ),
        ]
