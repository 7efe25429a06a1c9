"""Downlinks as a part of the agent: it checks each message the uplink receives on the
downlink topics, applies it to its store, reports the decision north, and tells the
parts that consume documents.

Built after the outbox and before the uplink (which gets `handle` as its
`on_downlink`), so it starts before messages can come and stops after they stopped.
Without `[downlink] backend_key` in the site file it is off: the uplink does not
subscribe at all (nothing unsigned is ever accepted) and /healthz says so.

Every message ends in one decision (`store.Decision`): applied, already applied, or
refused with a reason (malformed, forged, wrong-target, stale, replayed, conflict). Each
is logged with its reason (one record, fields kind/seq/result/reason/topic), counted
(`kommune_downlinks_total{kind,result}`), and reported north as an audit event on the
stream ``downlink/<kind>`` (``downlink/unknown`` when the kind cannot be read): record
name the result, value a JSON text ``{"seq", "digest", "reason", "detail", "topic"}``.
`handle` returns only after the decision is committed to the store and the report to the
outbox, so the uplink's PUBACK (sent when it returns) never runs ahead of either.

Audit events are never evicted, so whoever can publish on the downlink topics (the
broker's ACL should allow only the backend) could fill the outbox with refusals: at most
REFUSALS_REPORTED_PER_MINUTE refusals a minute are reported north; the rest are logged
once per minute, and counted (`kommune_downlink_refusals_unreported_total`). Applied
documents are always reported.

Consumers (the lock manager, the lamp control loop, ...) get documents like this, from
their builder in parts.py, built after this part:

    downlinks = w.part("downlink", DownlinkPart)
    unsubscribe = downlinks.subscribe("lock-epoch", on_epoch)   # on_epoch(applied)

`on_epoch` is called at once with the current document if there is one (also one applied
before a restart: the store keeps them), then with each newly applied one, on the event
loop, right after it is committed. It must be quick and not raise (an exception is
logged and counted, the others still hear). A document replaces the one before it whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kommune.edge.agent.logs import fields
from kommune.edge.agent.metrics import Labels, Metric, counter, gauge
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.agent.process import PartError
from kommune.edge.agent.site import Site
from kommune.edge.downlink.envelope import KINDS, EnvelopeError, Verifier, decode
from kommune.edge.downlink.keys import KeyFileError, load_public
from kommune.edge.downlink.store import Applied, Decision, DownlinkStore, Result, StoreError
from kommune.edge.northbound import Event, Priority

log = logging.getLogger("kommune.edge.downlink")

#: The store's file in the agent's state directory (outbox.dir).
DATABASE_NAME = "downlinks.sqlite3"
Subscriber = Callable[[Applied], None]
#: Refusals reported north per minute at most (see the module docstring).
REFUSALS_REPORTED_PER_MINUTE = 30


class DownlinkPart:
    name = "downlink"

    def __init__(self, site: Site, outbox: OutboxPart) -> None:
        self.site = site
        self.config = site.downlink
        self._outbox = outbox
        self._store: DownlinkStore | None = None
        self._verifier: Verifier | None = None
        self._lock = asyncio.Lock()
        self._subscribers: dict[str, list[Subscriber]] = {kind: [] for kind in KINDS}
        self._decisions: Counter[tuple[str, str]] = Counter()
        self._last: dict[str, Any] | None = None
        self._report_failures = 0
        self._subscriber_failures = 0
        self._source_seq = 0
        self._window_start = 0.0
        self._window_reports = 0
        self._unreported = 0

    @property
    def enabled(self) -> bool:
        """A backend key is configured: the uplink subscribes to downlinks."""
        return self.config.backend_key is not None

    async def start(self) -> None:
        if self.config.backend_key is None:
            log.warning("no [downlink] backend_key in the site file: downlinks are off")
            return
        try:
            key = load_public(self.config.backend_key)
        except KeyFileError as exc:
            raise PartError(f"downlink.backend_key: {exc}") from None
        path = self.site.outbox.dir / DATABASE_NAME
        try:
            self._store = await asyncio.to_thread(DownlinkStore.open, path)
        except StoreError as exc:
            raise PartError(f"the downlink store: {exc}") from None
        self._verifier = Verifier(
            key,
            self.site.agent.site,
            self.site.agent.id,
            max_age_ms=round(self.config.max_age_s * 1000),
        )
        current = self._store.documents()
        log.info(
            "downlinks on: %d documents applied before",
            len(current),
            extra=fields(kinds=sorted(current), store=str(path)),
        )

    async def stop(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            async with self._lock:
                await asyncio.to_thread(store.close)

    # -- for consumers ----------------------------------------------------------------

    def current(self, kind: str) -> Applied | None:
        """The document of `kind` applied last, if any (between start and stop)."""
        return self._store.current(kind) if self._store is not None else None

    def subscribe(self, kind: str, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with the current document of `kind` now (if any) and with each
        one applied from now on; returns the function that unsubscribes."""
        if kind not in KINDS:
            raise ValueError(f"no downlink kind {kind!r} (one of {', '.join(KINDS)})")
        self._subscribers[kind].append(callback)
        if (doc := self.current(kind)) is not None:
            self._tell(callback, doc)

        def unsubscribe() -> None:
            if callback in self._subscribers[kind]:
                self._subscribers[kind].remove(callback)

        return unsubscribe

    # -- for the uplink ---------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        """Decide about one message (see the module docstring); returns once the
        decision is committed and reported."""
        store, verifier = self._store, self._verifier
        if store is None or verifier is None:
            raise RuntimeError("a downlink came while the downlink part is not started")
        level = topic.rsplit("/", 1)[-1]
        topic_kind = level if level in KINDS else None
        async with self._lock:
            now_ms = time.time_ns() // 1_000_000
            try:
                dl = verifier.check(payload, now_ms, topic_kind=level)
            except EnvelopeError as exc:
                decision = _refused(exc, payload, topic_kind)
            else:
                decision = await asyncio.to_thread(store.apply, dl, payload, now_ms)
            if self._may_report(decision):
                self._log(decision, topic)
                await self._report(decision, topic, now_ms)
            else:
                self._count(decision)
            if decision.result is Result.APPLIED and decision.kind is not None:
                doc = store.current(decision.kind)
                for callback in list(self._subscribers[decision.kind]):
                    if doc is not None:
                        self._tell(callback, doc)

    # -- inside -----------------------------------------------------------------------

    def _tell(self, callback: Subscriber, doc: Applied) -> None:
        try:
            callback(doc)
        except Exception as exc:
            self._subscriber_failures += 1
            log.error("a %s subscriber failed: %s", doc.kind, exc, exc_info=exc)

    def _may_report(self, d: Decision) -> bool:
        """Whether this decision is logged and reported (refusals: within the cap)."""
        if d.result is not Result.REFUSED:
            return True
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            self._window_start, self._window_reports = now, 0
        self._window_reports += 1
        if self._window_reports <= REFUSALS_REPORTED_PER_MINUTE:
            return True
        self._unreported += 1
        if self._window_reports == REFUSALS_REPORTED_PER_MINUTE + 1:
            log.warning(
                "more than %d refused downlinks this minute: the rest are counted only",
                REFUSALS_REPORTED_PER_MINUTE,
                extra=fields(kind=d.kind, reason=d.label),
            )
        return False

    def _count(self, d: Decision) -> None:
        self._decisions[(d.kind or "unknown", d.label)] += 1

    def _log(self, d: Decision, topic: str) -> None:
        kind = d.kind or "unknown"
        self._count(d)
        self._last = {
            "kind": kind,
            "seq": d.seq,
            "result": d.label,
            "detail": d.detail or None,
            "at_ms": time.time_ns() // 1_000_000,
        }
        values = fields(
            kind=kind,
            seq=d.seq,
            result=d.result.value,
            reason=d.reason.value if d.reason else None,
            digest=d.digest.hex() if d.digest else None,
            topic=topic,
        )
        if d.result is Result.REFUSED:
            log.warning("refused a %s downlink: %s: %s", kind, d.label, d.detail, extra=values)
        else:
            log.info("%s downlink seq %s: %s", kind, d.seq, d.result.value, extra=values)

    async def _report(self, d: Decision, topic: str, now_ms: int) -> None:
        """The decision as an audit event, committed to the outbox before we return (a
        failure is logged and counted: the decision stands, the report is lost)."""
        self._source_seq = max(self._source_seq + 1, time.time_ns() // 1000)
        value = json.dumps(
            {
                "seq": d.seq,
                "digest": d.digest.hex() if d.digest else None,
                "reason": d.reason.value if d.reason else None,
                "detail": d.detail or None,
                "topic": topic,
            },
            separators=(",", ":"),
        )
        event = Event(
            f"downlink/{d.kind or 'unknown'}",
            Priority.AUDIT,
            self._source_seq,
            now_ms,
            d.result.value,
            value,
        )
        try:
            await self._outbox.outbox.append([event])
        except Exception as exc:
            self._report_failures += 1
            log.error("could not report a downlink decision north: %s", exc, exc_info=exc)

    # -- health and metrics -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False, "why": "no [downlink] backend_key: downlinks are off"}
        store = self._store
        docs = store.documents() if store is not None else {}
        return {
            "enabled": True,
            "documents": {k: {"seq": a.seq, "applied_ms": a.applied_ms} for k, a in docs.items()},
            "decisions": {f"{k}/{r}": n for (k, r), n in sorted(self._decisions.items())},
            "last": self._last,
            "store_kept_aside": str(store.kept_aside) if store and store.kept_aside else None,
            "report_failures": self._report_failures,
            "refusals_unreported": self._unreported,
        }

    def metrics(self) -> list[Metric]:
        by_result: dict[Labels, float] = {
            (("kind", k), ("result", r)): float(n) for (k, r), n in self._decisions.items()
        }
        seqs: dict[Labels, float] = {}
        if self._store is not None:
            seqs = {(("kind", k),): float(a.seq) for k, a in self._store.documents().items()}
        return [
            gauge("downlink_enabled", "1 when a backend key is set", float(self.enabled)),
            counter("downlinks_total", "downlink decisions by kind and result", by_result),
            gauge("downlink_applied_seq", "seq of the document applied, per kind", seqs),
            counter(
                "downlink_report_failures_total",
                "decisions that could not be reported north",
                self._report_failures,
            ),
            counter(
                "downlink_refusals_unreported_total",
                "refusals over the per-minute cap: counted, not reported north",
                self._unreported,
            ),
            counter(
                "downlink_subscriber_failures_total",
                "subscriber callbacks that raised",
                self._subscriber_failures,
            ),
        ]


def _refused(exc: EnvelopeError, payload: bytes, topic_kind: str | None) -> Decision:
    """A refusal before the store: with the envelope's kind and seq when it decodes."""
    try:
        dl = decode(payload).downlink
    except EnvelopeError:
        return Decision(Result.REFUSED, topic_kind, None, None, exc.reason, str(exc))
    return Decision(Result.REFUSED, dl.kind, dl.seq, dl.digest, exc.reason, str(exc))
