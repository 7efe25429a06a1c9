"""`kommune bench uplink`: the durable outbox and the MQTT uplink against two references.

One run, its own Mosquitto on a free port in a temporary directory (both gone when it
ends, also on Ctrl-C or an error). The events are shaped as a site's: `STREAMS` streams,
half of them parking bays (`occupied`, 0/1, a change every few minutes, millisecond
timestamps), half street lamps (`energy`, a Wh meter reading every ~15 minutes).

* raw_sqlite_rows_per_s: the physical limit of this disk for the outbox's rows. One
  table with the outbox's event columns (schema.EVENT_COLUMNS: row id, stream id, seq,
  source seq, time, added time, name, kind, value, unit), WAL, synchronous=FULL, the
  same rows the ingest stores (built beforehand) in transactions of 1,000 rows, inserted
  two ways: executemany, and multi-row `INSERT ... VALUES (...), (...)` statements of 100
  rows (what the outbox itself does). The figure is the faster of the two, so the
  reference is the best this disk and SQLite do, not a method the outbox beats; both are
  reported (raw_sqlite_executemany_rows_per_s, raw_sqlite_multirow_rows_per_s). No dedup
  table, no application.
* ingest_events_per_s: `Outbox.append` with ack-after-commit (each awaited append
  returns once its COMMIT, synchronous=FULL, has): one producer per stream, all at once,
  each appending lists of 1-10 events (group commit merges them). The events are built
  beforehand (a node's frames arrive built); the rate is events stored per second of
  wall time, first append to last acknowledgement. ingest_large_lists_events_per_s: the
  same events in lists of 1,000 from 4 producers. Raw SQLite and both ingests are
  measured ROUNDS times in turns (fresh files each time); each figure is the median.
* wire_bytes_per_event: an outbox holding `wire_events` events (occupancy and
  telemetry, queued before the uplink starts), drained by the `Uplink` (SenML-CBOR,
  deflated, QoS 1, default batch policies) through a TCP proxy that counts every byte of
  the connection both ways (CONNECT to DISCONNECT, PUBACKs and pings included; TCP/IP
  headers not), divided by the events. uplink_counted_wire_bytes_per_event: the uplink's
  own count (PUBLISH + PUBACK packets of acknowledged publishes) for comparison.
* baseline_wire_bytes_per_event: the naive way, on the same broker through the same
  kind of proxy: one MQTT 5 QoS 1 publish per event, a JSON object with the event's
  idempotency key (agent, stream, seq), name, time, value and unit, to a topic per stream,
  for the first `baseline_events` of the same events.
* publishes_per_1000_events: PUBLISH packets the uplink sent per 1,000 events drained.
* restart_to_first_publish_ms_1m: an outbox filled with `restart_rows` rows (1 M by
  default; the fill is setup) and closed; then the time from `Outbox.open` (inspection,
  loading) through the uplink's connect to the first publish the broker acknowledged
  (PUBACK). restart_to_first_publish_sent_ms_1m: to the first PUBLISH handed to the
  socket.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from kommune.bench import broker
from kommune.bench.report import BenchError, Metric, Metrics, Suite
from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox import Outbox
from kommune.edge.outbox.recovery import sidecars
from kommune.edge.outbox.schema import EVENT_COLUMNS, INSERT_COLUMNS, KINDS
from kommune.edge.uplink import Uplink, UplinkConfig

EVENTS: Final = 300_000
RESTART_ROWS: Final = 1_000_000
#: The baseline publishes one packet per event: this many at most (~10 s of them).
BASELINE_EVENTS: Final = 20_000
#: The wire figures drain this many events at most.
WIRE_EVENTS: Final = 100_000
STREAMS: Final = 200
RAW_BATCH: Final = 1_000
#: Rows per statement of the multi-row INSERT reference (the outbox uses up to 100 too).
RAW_MULTIROW: Final = 100
#: Raw SQLite and ingest are measured this many times, in turns; the medians count.
ROUNDS: Final = 3
LARGE_LIST: Final = 1_000
LARGE_PRODUCERS: Final = 4
AGENT: Final = "edge-bench"
SITE: Final = "bench"
BUDGET_BYTES: Final = 16 << 30
DEADLINE_S: Final = 300.0
#: 2026-11-01 00:00 UTC: where the site's clocks start.
START_MS: Final = 1_793_491_200_000


# -- the site's events -----------------------------------------------------------------


def site_events(count: int, *, streams: int = STREAMS, seed: int = 7) -> list[Event]:
    """`count` events as they arrive from the site's nodes, interleaved across streams."""
    rng = random.Random(seed)
    per_stream = [_stream_events(s, -(-count // streams), rng) for s in range(streams)]
    events: list[Event] = []
    for group in zip(*per_stream, strict=True):
        events += group
    return events[:count]


def _stream_events(index: int, count: int, rng: random.Random) -> list[Event]:
    time_ms = START_MS + rng.randrange(600_000)
    events = []
    if index % 2 == 0:
        stream, state = f"bay-{index // 2 + 1}/occupancy", rng.randrange(2)
        for source_seq in range(1, count + 1):
            time_ms += rng.randrange(30_000, 1_800_000)  # a car comes or goes
            state ^= 1
            events.append(Event(stream, Priority.OCCUPANCY, source_seq, time_ms, "occupied", state))
    else:
        stream, meter_wh = f"lamp-{index // 2 + 1}/energy", rng.randrange(10_000, 90_000)
        for source_seq in range(1, count + 1):
            time_ms += 900_000 + rng.randrange(-500, 500)  # every 15 minutes, give or take
            meter_wh += rng.randrange(8, 16)
            events.append(
                Event(stream, Priority.TELEMETRY, source_seq, time_ms, "energy", meter_wh, "Wh")
            )
    return events


def small_lists(events: Sequence[Event], seed: int = 11) -> dict[str, list[list[Event]]]:
    """Each stream's events in lists of 1-10, in order: what one producer appends."""
    rng = random.Random(seed)
    by_stream: dict[str, list[Event]] = {}
    for event in events:
        by_stream.setdefault(event.stream, []).append(event)
    lists: dict[str, list[list[Event]]] = {}
    for stream, mine in by_stream.items():
        at, chunks = 0, []
        while at < len(mine):
            size = rng.randint(1, 10)
            chunks.append(mine[at : at + size])
            at += size
        lists[stream] = chunks
    return lists


# -- the references and the outbox -----------------------------------------------------


def raw_sqlite_rows_per_s(path: Path, events: Sequence[Event], *, multirow: bool) -> float:
    """The outbox's rows for `events`, inserted with no application around them: with
    executemany, or (`multirow`) in statements of RAW_MULTIROW rows each."""
    ids: dict[str, int] = {}
    seqs: dict[str, int] = {}
    added_ms = int(time.time() * 1000)
    rows = []
    for row_id, e in enumerate(events, start=1):
        stream_id = ids.setdefault(e.stream, len(ids) + 1)
        seq = seqs[e.stream] = seqs.get(e.stream, 0) + 1
        kind = KINDS[type(e.value)]
        rows.append(
            (
                row_id,
                stream_id,
                seq,
                e.source_seq,
                e.time_ms,
                added_ms,
                e.name,
                kind,
                e.value,
                e.unit,
            )
        )
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"CREATE TABLE events {EVENT_COLUMNS}")
        one = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        insert = f"INSERT INTO events {INSERT_COLUMNS} VALUES {one}"
        many = f"INSERT INTO events {INSERT_COLUMNS} VALUES " + ", ".join([one] * RAW_MULTIROW)
        flat = [value for row in rows for value in row] if multirow else []
        width = len(rows[0]) if rows else 0
        start = time.perf_counter()
        for at in range(0, len(rows), RAW_BATCH):
            conn.execute("BEGIN")
            batch = rows[at : at + RAW_BATCH]
            if not multirow:
                conn.executemany(insert, batch)
            else:
                end = at + len(batch)
                whole = at + (len(batch) // RAW_MULTIROW) * RAW_MULTIROW
                for first in range(at, whole, RAW_MULTIROW):
                    conn.execute(many, flat[first * width : (first + RAW_MULTIROW) * width])
                if whole < end:
                    conn.executemany(insert, rows[whole:end])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return len(rows) / elapsed


async def open_outbox(path: Path) -> Outbox:
    return await Outbox.open(path, agent=AGENT, budget_bytes=BUDGET_BYTES)


async def ingest_events_per_s(path: Path, producers: Sequence[Sequence[Sequence[Event]]]) -> float:
    """Events per second stored by concurrent producers, each appending its lists in turn
    and waiting for each acknowledgement (the commit) before the next."""
    total = sum(len(chunk) for lists in producers for chunk in lists)
    async with await open_outbox(path) as outbox:

        async def produce(lists: Sequence[Sequence[Event]]) -> None:
            for chunk in lists:
                await outbox.append(chunk)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for lists in producers:
                group.create_task(produce(lists))
        elapsed = time.perf_counter() - start
        if outbox.stats.appended != total:
            raise BenchError(f"the outbox stored {outbox.stats.appended} of {total} events")
    return total / elapsed


async def fill(outbox: Outbox, events: Iterator[Event], list_size: int = 10_000) -> int:
    """Setup, not measured: append `events` in large lists."""
    stored = 0
    chunk: list[Event] = []
    for event in events:
        chunk.append(event)
        if len(chunk) == list_size:
            await outbox.append(chunk)
            stored, chunk = stored + len(chunk), []
    if chunk:
        await outbox.append(chunk)
        stored += len(chunk)
    return stored


def _fill_events(count: int) -> Iterator[Event]:
    """`count` site events, made as they are needed (a million Events take memory)."""
    step = 50_000
    for at in range(0, count, step):
        for event in site_events(min(step, count - at), seed=at):
            # Distinct source_seqs per chunk: every event is new, none a retransmission.
            yield Event(
                event.stream,
                event.priority,
                event.source_seq + at,
                event.time_ms,
                event.name,
                event.value,
                event.unit,
            )


# -- on the wire -------------------------------------------------------------------------


def _uplink_config(port: int, client: str) -> UplinkConfig:
    return UplinkConfig(
        host=broker.HOST, port=port, site=SITE, agent=AGENT, client_id=client, drain_s=0.0
    )


async def uplink_wire(path: Path, mqtt: broker.Broker, events: Sequence[Event]) -> Metrics:
    """Drain an outbox holding `events` through a byte-counting proxy."""
    async with await open_outbox(path) as outbox:
        await fill(outbox, iter(events))
        async with broker.ByteCounter(mqtt.host, mqtt.port) as wire:
            uplink = Uplink(_uplink_config(wire.port, "bench-uplink"), outbox)
            uplink.start()
            try:
                async with asyncio.timeout(DEADLINE_S):
                    await uplink.wait_state(lambda s: s.acked_rows >= len(events))
            finally:
                await uplink.stop()
            await _settle(wire)
        state = uplink.state
    count = len(events)
    return {
        "wire_bytes_per_event": round(wire.total_bytes / count, 2),
        "uplink_counted_wire_bytes_per_event": round(state.wire_bytes / count, 2),
        "publishes_per_1000_events": round(state.publishes * 1000 / count, 2),
        "wire_events": count,
    }


async def _settle(wire: broker.ByteCounter) -> None:
    """Let the proxy forward the last packets (DISCONNECT) before its count is read."""
    for _ in range(50):
        before = wire.total_bytes
        await asyncio.sleep(0.01)
        if wire.total_bytes == before:
            return


#: aiomqtt warns of every publish past its 10th in flight; the baseline keeps 100 in flight.
_QUIET = logging.getLogger("kommune.bench.uplink.baseline")
_QUIET.setLevel(logging.ERROR)


def naive_json(event: Event, seq: int) -> bytes:
    """The baseline's payload: one event, its idempotency key and reading, as JSON."""
    doc: dict[str, object] = {
        "agent": AGENT,
        "stream": event.stream,
        "seq": seq,
        "name": event.name,
        "time_ms": event.time_ms,
        "value": event.value,
    }
    if event.unit is not None:
        doc["unit"] = event.unit
    return json.dumps(doc, separators=(",", ":")).encode()


async def baseline_wire(mqtt: broker.Broker, events: Sequence[Event]) -> Metrics:
    """One QoS 1 JSON publish per event, through a byte-counting proxy."""
    import aiomqtt

    async with broker.ByteCounter(mqtt.host, mqtt.port) as wire:
        client = aiomqtt.Client(
            wire.host,
            wire.port,
            identifier="bench-baseline",
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=100,
            max_queued_outgoing_messages=0,
            logger=_QUIET,
        )
        seqs: dict[str, int] = {}
        window = asyncio.Semaphore(100)

        async def publish(topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=1)
            finally:
                window.release()

        async with client, asyncio.timeout(DEADLINE_S), asyncio.TaskGroup() as group:
            for event in events:
                seq = seqs[event.stream] = seqs.get(event.stream, 0) + 1
                await window.acquire()
                group.create_task(
                    publish(f"kommune/{SITE}/{AGENT}/{event.stream}", naive_json(event, seq))
                )
        await _settle(wire)
    return {
        "baseline_wire_bytes_per_event": round(wire.total_bytes / len(events), 2),
        "baseline_publishes_per_1000_events": 1000,
        "baseline_events": len(events),
    }


async def restart_to_first_publish(path: Path, mqtt: broker.Broker, rows: int) -> Metrics:
    """Fill an outbox with `rows` rows and close it; then time open -> first publish."""
    async with await open_outbox(path) as outbox:
        await fill(outbox, _fill_events(rows))
    config = _uplink_config(mqtt.port, "bench-restart")
    start = time.perf_counter()
    async with await open_outbox(path) as outbox:
        opened = time.perf_counter()
        if sum(outbox.depth().rows.values()) != rows:
            raise BenchError(f"the reopened outbox holds {outbox.depth().rows}, not {rows} rows")
        uplink = Uplink(config, outbox)
        uplink.start()
        try:
            async with asyncio.timeout(DEADLINE_S):
                await uplink.wait_state(lambda s: s.publishes >= 1)
                sent = time.perf_counter()
                await uplink.wait_state(lambda s: s.acked_publishes >= 1)
                acked = time.perf_counter()
        finally:
            await uplink.stop()
    return {
        "restart_to_first_publish_ms_1m": round((acked - start) * 1000, 1),
        "restart_to_first_publish_sent_ms_1m": round((sent - start) * 1000, 1),
        "restart_open_ms": round((opened - start) * 1000, 1),
        "restart_rows": rows,
    }


# -- the suite ---------------------------------------------------------------------------


async def _measure(workdir: Path, events: int, restart_rows: int) -> Metrics:
    results: Metrics = {"events": events}
    with broker.own_mosquitto(workdir) as mqtt:
        results |= await _with_site_events(workdir, mqtt, events)
        # The site's events are gone: a restarting agent does not hold the bench's
        # hundreds of thousands of objects for the collector to walk.
        gc.collect()
        results |= await restart_to_first_publish(workdir / "restart.db", mqtt, restart_rows)
    ours = float(results["wire_bytes_per_event"])
    baseline = float(results["baseline_wire_bytes_per_event"])
    results["baseline_to_wire_ratio"] = round(baseline / ours, 1)
    return results


def _fresh(path: Path) -> Path:
    """`path` with no database (nor its WAL) left from a round before."""
    for file in (path, *sidecars(path), path.with_name(path.name + ".lock")):
        file.unlink(missing_ok=True)
    return path


async def _with_site_events(workdir: Path, mqtt: broker.Broker, events: int) -> Metrics:
    """Every figure but the restart: one set of site events."""
    site = site_events(events)
    producers = list(small_lists(site).values())
    large = [site[at : at + LARGE_LIST] for at in range(0, len(site), LARGE_LIST)]
    large_producers = [large[p::LARGE_PRODUCERS] for p in range(LARGE_PRODUCERS)]
    # The bench holds every event built beforehand (an agent holds a few in flight):
    # out of the collector's way, so that neither side pays for walking them.
    gc.collect()
    gc.freeze()
    try:
        raws_many, raws_multi, ingests, ingests_large = [], [], [], []
        # Taken in turns, a median of each: a neighbour's load spreads over all of them.
        for _ in range(ROUNDS):
            raw_db = workdir / "raw.db"
            raws_many.append(raw_sqlite_rows_per_s(_fresh(raw_db), site, multirow=False))
            raws_multi.append(raw_sqlite_rows_per_s(_fresh(raw_db), site, multirow=True))
            ingests.append(await ingest_events_per_s(_fresh(workdir / "ingest.db"), producers))
            ingests_large.append(
                await ingest_events_per_s(_fresh(workdir / "ingest.db"), large_producers)
            )
    finally:
        gc.unfreeze()
    raw_many, raw_multi = statistics.median(raws_many), statistics.median(raws_multi)
    raw, ingest = max(raw_many, raw_multi), statistics.median(ingests)
    ingest_large = statistics.median(ingests_large)
    results: Metrics = {
        "ingest_events_per_s": round(ingest),
        "raw_sqlite_rows_per_s": round(raw),
        "raw_sqlite_executemany_rows_per_s": round(raw_many),
        "raw_sqlite_multirow_rows_per_s": round(raw_multi),
        "ingest_fraction_of_raw": round(ingest / raw, 3),
        "ingest_large_lists_events_per_s": round(ingest_large),
    }
    wire_events = site[: min(events, WIRE_EVENTS)]
    results |= await uplink_wire(workdir / "wire.db", mqtt, wire_events)
    results |= await baseline_wire(mqtt, wire_events[:BASELINE_EVENTS])
    return results


def run(*, events: int = EVENTS, restart_rows: int = RESTART_ROWS) -> Metrics:
    if events < STREAMS or restart_rows < 1:
        raise BenchError(f"--events must be at least {STREAMS}, --restart-rows at least 1")
    with broker.scratch_dir("kommune-bench-uplink-") as workdir:
        return asyncio.run(_measure(workdir, events, restart_rows))


def _at_least(key: str, bound: float) -> Callable[[Metrics], bool]:
    return lambda r: float(r[key]) >= bound


SUITE = Suite(
    name="uplink",
    metrics=(
        Metric(
            "ingest_events_per_s",
            "durable ingest, ack after commit (producers of 1-10 events)",
            "events/s",
            ">= 50 % of raw SQLite",
            check=lambda r: (
                float(r["ingest_events_per_s"]) >= 0.5 * float(r["raw_sqlite_rows_per_s"])
            ),
        ),
        Metric(
            "raw_sqlite_rows_per_s", "raw SQLite, WAL + FULL, 1,000-row commits (best)", "rows/s"
        ),
        Metric("raw_sqlite_executemany_rows_per_s", "  of it: executemany", "rows/s"),
        Metric("raw_sqlite_multirow_rows_per_s", "  of it: 100-row INSERT statements", "rows/s"),
        Metric(
            "ingest_fraction_of_raw",
            "ingest / raw SQLite",
            "",
            ">= 0.5",
            check=_at_least("ingest_fraction_of_raw", 0.5),
            decimals=3,
        ),
        Metric("ingest_large_lists_events_per_s", "durable ingest, lists of 1,000", "events/s"),
        Metric(
            "wire_bytes_per_event",
            "bytes on the wire per event (TCP payload, both ways)",
            "B",
            "<= 12 B",
            check=lambda r: float(r["wire_bytes_per_event"]) <= 12,
        ),
        Metric("uplink_counted_wire_bytes_per_event", "the uplink's own count", "B"),
        Metric("baseline_wire_bytes_per_event", "baseline: one JSON publish per event", "B"),
        Metric(
            "baseline_to_wire_ratio",
            "baseline bytes / ours",
            "x",
            ">= 7x",
            check=_at_least("baseline_to_wire_ratio", 7),
        ),
        Metric("publishes_per_1000_events", "publishes per 1,000 events", ""),
        Metric(
            "restart_to_first_publish_ms_1m",
            "restart, restart_rows queued -> first PUBACK",
            "ms",
            "<= 1,000 ms",
            check=lambda r: float(r["restart_to_first_publish_ms_1m"]) <= 1000,
        ),
        Metric("restart_to_first_publish_sent_ms_1m", "the same, to the first PUBLISH sent", "ms"),
        Metric("restart_open_ms", "of it: Outbox.open", "ms"),
    ),
    run=run,
    options=("events", "restart_rows"),
)
