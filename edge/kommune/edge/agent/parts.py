"""Which parts the agent runs, and how each is built from the site file.

`PARTS` is the list, in start order (the host stops them in reverse). Plugging a part
in is one line here: how to build it from the site (and from parts built before it),
and what to do when it crashes. A builder returns None when the site does not call for
the part (e.g. no [[links]]: no node links). Imports happen inside the builders, so
`kommune edge check` does not load what only `run` needs.

    PartSpec(_outbox, on_crash=OnCrash.STOP_AGENT),  # def _outbox(w): return OutboxPart(w.site)
    PartSpec(_uplink, stop_weight=6.0),  # the outbox part: w.part("outbox", OutboxPart)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kommune.edge.agent.process import DEFAULT_START_TIMEOUT_S, Host, OnCrash, Part
from kommune.edge.agent.site import Site

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Wiring:
    """What a builder gets: the site, the host, and the parts built before."""

    site: Site
    host: Host

    def part(self, name: str, kind: type[T]) -> T:
        """The part called `name` built earlier in PARTS, as a `kind`."""
        for part in self.host.parts:
            if part.name == name:
                if not isinstance(part, kind):
                    raise TypeError(f"part {name!r} is a {type(part).__name__}, not {kind}")
                return part
        raise LookupError(f"no part {name!r} is built before this one (see PARTS)")


@dataclass(frozen=True, slots=True)
class PartSpec:
    build: Callable[[Wiring], Part | None]
    on_crash: OnCrash = OnCrash.RESTART
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    #: Its share of agent.stop_timeout_s against the parts still to stop (see Host.add).
    stop_weight: float = 1.0


def _health(w: Wiring) -> Part:
    from kommune.edge.agent.health import HealthServer

    bind = w.site.health
    return HealthServer(bind.host, bind.port, status=w.host.status, collect=w.host.metrics)


def _heartbeat(w: Wiring) -> Part:
    from kommune.edge.agent.heartbeat import Heartbeat

    return Heartbeat()


def _outbox(w: Wiring) -> Part:
    from kommune.edge.agent.outbox_part import OutboxPart

    return OutboxPart(w.site)


def _links(w: Wiring) -> Part | None:
    if not w.site.links:
        return None
    from kommune.edge.agent.outbox_part import OutboxPart
    from kommune.edge.links.part import LinksPart

    return LinksPart(w.site, w.part("outbox", OutboxPart))


def _lighting(w: Wiring) -> Part | None:
    if not w.site.links or not any(street.lamps for street in w.site.streets):
        return None
    from kommune.edge.agent.outbox_part import OutboxPart
    from kommune.edge.lighting.part import LightingPart
    from kommune.edge.links.part import LinksPart

    return LightingPart(w.site, w.part("links", LinksPart), w.part("outbox", OutboxPart))


def _parking(w: Wiring) -> Part | None:
    if w.site.parking is None or not any(street.bays for street in w.site.streets):
        return None
    from kommune.edge.agent.outbox_part import OutboxPart
    from kommune.edge.parking.part import ParkingPart

    return ParkingPart(w.site, w.part("outbox", OutboxPart))


def _downlink(w: Wiring) -> Part | None:
    if w.site.downlink.backend_key is None:
        return None  # no key, no downlinks: nothing is subscribed (the uplink says so)
    from kommune.edge.agent.downlink_part import DownlinkPart
    from kommune.edge.agent.outbox_part import OutboxPart

    return DownlinkPart(w.site, w.part("outbox", OutboxPart))


def _locks(w: Wiring) -> Part | None:
    if not w.site.locks:
        return None
    from kommune.edge.agent.downlink_part import DownlinkPart
    from kommune.edge.agent.outbox_part import OutboxPart
    from kommune.edge.locks.part import LockManagerPart

    downlinks = w.part("downlink", DownlinkPart) if w.site.downlink.backend_key else None
    return LockManagerPart(w.site, w.part("outbox", OutboxPart), downlinks=downlinks)


def _uplink(w: Wiring) -> Part:
    from kommune.edge.agent.downlink_part import DownlinkPart
    from kommune.edge.agent.outbox_part import OutboxPart
    from kommune.edge.agent.uplink_part import UplinkPart

    outbox = w.part("outbox", OutboxPart)
    downlinks = w.part("downlink", DownlinkPart) if w.site.downlink.backend_key else None
    return UplinkPart(w.site, outbox, downlinks)


#: The agent's parts in start order. The health endpoint comes first and goes last, so
#: /healthz answers (503) while the others start and stop.
PARTS: tuple[PartSpec, ...] = (
    PartSpec(_health),
    PartSpec(_heartbeat),
    # Everything going north passes through it: without it the agent must not run.
    PartSpec(_outbox, on_crash=OnCrash.STOP_AGENT),
    # Signed documents from the backend (off without [downlink]); before their consumers
    # and the uplink that delivers them.
    PartSpec(_downlink),
    # Node links append to the outbox and ack each frame after its commit; a serial
    # device that is missing or went away is tried again while the rest runs.
    PartSpec(_links),
    # The lamp control loop: Presence from the links in, SetLevel commands out; stops
    # before the links (which end the commands still retransmitting).
    PartSpec(_lighting),
    # BLE reports from the streets' parking bays ([parking]): verified, seq kept
    # durably, then committed to the outbox.
    PartSpec(_parking),
    # BLE door locks ([[locks]]): visited on a schedule; audit entries committed to the
    # outbox before the lock is told it may prune them.
    PartSpec(_locks),
    # Stops first (the host stops in reverse) and drains for up to its drain_s: a bigger
    # share of the stop budget.
    PartSpec(_uplink, stop_weight=6.0),
)


def build(site: Site, host: Host, specs: Sequence[PartSpec] = PARTS) -> None:
    """Build the parts `specs` call for and add them to `host`, in order."""
    wiring = Wiring(site, host)
    for spec in specs:
        part = spec.build(wiring)
        if part is not None:
            host.add(
                part,
                on_crash=spec.on_crash,
                start_timeout_s=spec.start_timeout_s,
                stop_weight=spec.stop_weight,
            )
