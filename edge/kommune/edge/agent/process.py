"""The host: one asyncio process, its parts started in order and stopped in reverse.

A part is any object with

    name: str                      how logs, /healthz and /metrics call it
    async start() -> None          take resources, return once serving; if it raises (or
                                   is cancelled) it leaves nothing behind
    async stop() -> None           drain and release; called once after a start that
                                   worked; start() may follow again (a restart)

and, if it has them,

    async run() -> None            its ongoing work, run from start() until stop(); if it
                                   raises or returns while the agent runs, the part crashed
    health() -> Mapping            quick, no I/O: merged into /healthz; "ok": False marks
                                   the part as not healthy
    metrics() -> Iterable[Metric]  quick, no I/O: its counters and gauges for /metrics

Lifecycle (`Host.run`):

- Parts start in the order they were added, each within its start timeout. If one
  fails, the ones already started stop in reverse order and `run` raises AgentError.
- A crash (run() raised or returned) is logged and counted; then the part's policy
  decides: RESTART stops it, waits (0.5 s, doubling up to 30 s; back to 0.5 s after a
  minute of good running) and starts it again, as often as needed; STOP_AGENT stops the
  whole agent, and `run` raises AgentError naming the part and its error.
- SIGTERM, SIGINT or SIGHUP: every started part stops, in reverse order, within
  `stop_timeout_s` in all; each part's stop gets the time left divided by the parts
  left (weighted by `stop_weight`: a part that drains may ask for more), and is
  cancelled when that runs out. A second signal exits at once (status
  128 + signal). A thread makes sure the process ends even if a part blocks the
  event loop: `stop_timeout_s` + 2 s after the stop began it exits with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from kommune.edge.agent.logs import fields
from kommune.edge.agent.metrics import Labels, Metric, check, counter, gauge

log = logging.getLogger("kommune.edge.agent")

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DEFAULT_START_TIMEOUT_S: Final = 30.0
#: How long a cancelled start or stop may take to unwind before the host moves on.
CANCEL_GRACE_S: Final = 0.5
#: After the stop budget, this much more for the event loop to close before the hard exit.
HARD_EXIT_GRACE_S: Final = 2.0


class AgentError(Exception):
    """The agent could not start, went down, or did not stop cleanly: one line."""


class PartError(Exception):
    """A part's own explanation of why it cannot start or run, shown as it is (other
    exceptions are shown with their type's name)."""


@runtime_checkable
class Part(Protocol):
    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Runs(Protocol):
    async def run(self) -> None: ...


@runtime_checkable
class ReportsHealth(Protocol):
    def health(self) -> Mapping[str, Any]: ...


@runtime_checkable
class ReportsMetrics(Protocol):
    def metrics(self) -> Iterable[Metric]: ...


class OnCrash(enum.Enum):
    """What the host does when a part's run() fails."""

    RESTART = "restart"
    STOP_AGENT = "stop-agent"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between restarts: initial_s, times factor each time, at most max_s; a part
    that ran reset_after_s before it crashed starts again from initial_s."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    reset_after_s: float = 60.0


@dataclass(eq=False)
class _Slot:
    part: Part
    on_crash: OnCrash
    start_timeout_s: float
    backoff: Backoff
    stop_weight: float
    #: not started, starting, up, restarting, failed, stopping, stopped, stop failed
    state: str = "not started"
    started: bool = False
    crashes: int = 0
    restarts: int = 0
    start_failures: int = 0
    start_s: float | None = None
    up_since: float = 0.0
    delay_s: float = 0.0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None
    metrics_failed: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.part.name


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    if isinstance(error, PartError) and text:
        return text[0]
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class Host:
    """Runs parts: `add` them in start order, then `await run()` until stopped."""

    def __init__(
        self,
        *,
        stop_timeout_s: float = 10.0,
        info: Mapping[str, str] | None = None,
    ) -> None:
        self.stop_timeout_s = stop_timeout_s
        #: Labels of kommune_agent_info and keys at the top of /healthz (agent, site).
        self.info = dict(info or {})
        self.phase = "created"
        self._slots: list[_Slot] = []
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._failure: str | None = None
        self._stopping = False
        self._started_at = time.time()
        self._metric_sources: list[Callable[[], Iterable[Metric]]] = []

    # -- building -------------------------------------------------------------------

    def add(
        self,
        part: Part,
        *,
        on_crash: OnCrash = OnCrash.RESTART,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        backoff: Backoff = Backoff(),
        stop_weight: float = 1.0,
    ) -> None:
        """Add `part` after those added before. `stop_weight`: its share of the stop
        budget against the parts still to stop (2.0: twice what a 1.0 part gets)."""
        if any(s.name == part.name for s in self._slots):
            raise ValueError(f"two parts are called {part.name!r}")
        if not stop_weight > 0:
            raise ValueError("stop_weight must be positive")
        self._slots.append(_Slot(part, on_crash, start_timeout_s, backoff, stop_weight))

    def add_metrics(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Metrics that belong to no part (e.g. log records per level)."""
        self._metric_sources.append(source)

    @property
    def parts(self) -> list[Part]:
        return [s.part for s in self._slots]

    # -- running --------------------------------------------------------------------

    def request_stop(self, reason: str, *, failure: str | None = None) -> None:
        """Stop the agent (the first reason counts); `failure` makes `run` raise it."""
        if self._stop.is_set():
            return
        self._stop_reason = reason
        self._failure = failure
        self._stop.set()

    async def run(self, *, handle_signals: bool = True, hard_exit: bool = True) -> None:
        """Start every part, serve until stopped, stop them all. Returns after a clean
        stop; raises AgentError if a part did not start, a STOP_AGENT part crashed or a
        stop failed. `handle_signals`/`hard_exit`: SIGTERM & co. and the stop watchdog
        (a program's main, not a test)."""
        loop = asyncio.get_running_loop()
        self._started_at = time.time()
        began = loop.time()
        if handle_signals:
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            log.info(
                "starting %s",
                ", ".join(s.name for s in self._slots) or "no parts",
                extra=fields(**self.info),
            )
            self.phase = "starting"
            try:
                await self._start_all()
                if not self._stop.is_set():
                    self.phase = "up"
                    took_ms = round((loop.time() - began) * 1000)
                    log.info("up in %d ms", took_ms, extra=fields(start_ms=took_ms))
                    await self._stop.wait()
            finally:
                # Also when cancelled: nothing started stays running.
                self.phase = "stopping"
                stopping_at = loop.time()
                log.info("stopping (%s)", self._stop_reason or "cancelled")
                if hard_exit:
                    _arm_watchdog(self.stop_timeout_s + HARD_EXIT_GRACE_S)
                clean = await self._stop_all()
                self.phase = "stopped"
                took_ms = round((loop.time() - stopping_at) * 1000)
                log.info("stopped in %d ms", took_ms, extra=fields(stop_ms=took_ms))
        finally:
            if handle_signals:
                for sig in STOP_SIGNALS:
                    loop.remove_signal_handler(sig)
        if self._failure:
            raise AgentError(self._failure)
        if not clean:
            failed = [s.name for s in self._slots if s.state == "stop failed"]
            raise AgentError(f"stopped, but {', '.join(failed)} did not stop cleanly (see log)")

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            log.warning("%s while stopping: exiting at once", name)
            _flush_logs()
            os._exit(128 + signum)
        self.request_stop(name)

    async def _start_all(self) -> None:
        for slot in self._slots:
            if self._stop.is_set():
                return
            if not await self._start(slot):
                if not self._stop.is_set():
                    self.request_stop(
                        "a part did not start",
                        failure=f"{slot.name} did not start: {slot.last_error}",
                    )
                return
            self._supervise(slot)

    async def _start(self, slot: _Slot) -> bool:
        """Start one part within its timeout, or until the agent is told to stop."""
        loop = asyncio.get_running_loop()
        slot.state = "starting"
        began = loop.time()
        starting = asyncio.ensure_future(slot.part.start())
        stop_waiter = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {starting, stop_waiter},
                timeout=slot.start_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop_waiter.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.wait({starting}, timeout=CANCEL_GRACE_S)
        if starting not in done:
            slot.state = "not started"
            if self._stop.is_set():
                return False
            slot.last_error = f"no answer within {slot.start_timeout_s:g} s"
        elif starting.cancelled():
            slot.last_error = "its start was cancelled"
        elif (error := starting.exception()) is not None:
            slot.last_error = _one_line(error)
            log.error(
                "did not start: %s", slot.last_error, exc_info=error, extra={"part": slot.name}
            )
        else:
            slot.started = True
            slot.state = "up"
            slot.up_since = loop.time()
            slot.start_s = slot.up_since - began
            log.info(
                "up",
                extra={"part": slot.name, **fields(start_ms=round(slot.start_s * 1000))},
            )
            return True
        slot.state = "not started"
        slot.start_failures += 1
        return False

    def _supervise(self, slot: _Slot) -> None:
        if isinstance(slot.part, Runs):
            slot.task = asyncio.create_task(self._keep_running(slot), name=f"part {slot.name}")

    async def _keep_running(self, slot: _Slot) -> None:
        """Run the part's run(); on a crash, apply its policy."""
        loop = asyncio.get_running_loop()
        part = slot.part
        assert isinstance(part, Runs)
        while True:
            error: BaseException | None = None
            try:
                await part.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = e
            if self._stopping:
                return  # a run that ends while its part stops is how it should be
            slot.crashes += 1
            slot.last_error = _one_line(error) if error else "its run() returned"
            log.error(
                "crashed: %s",
                slot.last_error,
                exc_info=error,
                extra={"part": slot.name, **fields(policy=slot.on_crash.value)},
            )
            if slot.on_crash is OnCrash.STOP_AGENT:
                slot.state = "failed"
                self.request_stop(
                    f"{slot.name} crashed",
                    failure=f"{slot.name} crashed ({slot.last_error}); its policy stops the agent",
                )
                return
            slot.state = "restarting"
            backoff = slot.backoff
            if loop.time() - slot.up_since >= backoff.reset_after_s or slot.delay_s == 0:
                slot.delay_s = backoff.initial_s
            slot.started = False
            await self._stop_part(slot, backoff.max_s)
            while True:
                slot.state = "restarting"
                log.info(
                    "restarting in %.1f s",
                    slot.delay_s,
                    extra={"part": slot.name, **fields(delay_s=slot.delay_s)},
                )
                await asyncio.sleep(slot.delay_s)
                slot.delay_s = min(slot.delay_s * backoff.factor, backoff.max_s)
                if await self._start(slot):
                    slot.restarts += 1
                    break
                if self._stop.is_set():
                    return

    async def _stop_all(self) -> bool:
        """Stop the started parts in reverse order within the budget; True if all did."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout_s
        clean = True
        pending = [s for s in reversed(self._slots) if s.started or s.task is not None]
        for i, slot in enumerate(pending):
            weights = sum(s.stop_weight for s in pending[i:])
            share = max(0.0, deadline - loop.time()) * slot.stop_weight / weights
            if slot.task is not None and not slot.started:
                slot.task.cancel()  # between a crash and its restart: no run() to drain
                await asyncio.wait({slot.task}, timeout=CANCEL_GRACE_S)
            if slot.started:
                slot.state = "stopping"
                slot.started = False
                if await self._stop_part(slot, share):
                    slot.state = "stopped"
                else:
                    slot.state = "stop failed"
                    clean = False
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()  # stop() should have ended run(); if not, it ends now
                await asyncio.wait({slot.task}, timeout=CANCEL_GRACE_S)
            if slot.task is not None and slot.task.done() and not slot.task.cancelled():
                slot.task.exception()  # retrieved: its error was logged already
        return clean

    async def _stop_part(self, slot: _Slot, timeout_s: float) -> bool:
        began = asyncio.get_running_loop().time()
        stopping = asyncio.ensure_future(slot.part.stop())
        done, _ = await asyncio.wait({stopping}, timeout=timeout_s)
        took_ms = round((asyncio.get_running_loop().time() - began) * 1000)
        extra: dict[str, Any] = {"part": slot.name, **fields(stop_ms=took_ms)}
        if not done:
            stopping.cancel()
            await asyncio.wait({stopping}, timeout=CANCEL_GRACE_S)
            slot.last_error = f"did not stop within {timeout_s:.1f} s"
            log.error("%s: cancelled", slot.last_error, extra=extra)
            return False
        if stopping.cancelled():
            slot.last_error = "its stop was cancelled"
            log.error("%s", slot.last_error, extra=extra)
            return False
        if (error := stopping.exception()) is not None:
            slot.last_error = f"stop failed: {_one_line(error)}"
            log.error("%s", slot.last_error, exc_info=error, extra=extra)
            return False
        log.info("stopped", extra=extra)
        return True

    # -- reporting ------------------------------------------------------------------

    def status(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the /healthz document): healthy when the agent is up and every part
        is up and does not say "ok": false."""
        healthy = self.phase == "up"
        parts: dict[str, Any] = {}
        for slot in self._slots:
            doc: dict[str, Any] = {
                "state": slot.state,
                "crashes": slot.crashes,
                "restarts": slot.restarts,
            }
            if slot.last_error:
                doc["last_error"] = slot.last_error
            ok = slot.state == "up"
            if ok and isinstance(slot.part, ReportsHealth):
                try:
                    doc.update(slot.part.health())
                except Exception as e:
                    doc["health_error"] = _one_line(e)
                    ok = False
                ok = ok and doc.get("ok", True) is not False
            doc["ok"] = ok
            healthy = healthy and ok
            parts[slot.name] = doc
        status = "degraded" if self.phase == "up" and not healthy else self.phase
        return healthy, {
            "status": status,
            **self.info,
            "uptime_s": round(time.time() - self._started_at, 3),
            "parts": parts,
        }

    def metrics(self) -> list[Metric]:
        """The host's own metrics, then each part's (a part whose metrics() fails or
        gives a malformed metric is counted and logged once, the rest still shows)."""

        def by_part(value: Callable[[_Slot], float | None]) -> dict[Labels, float]:
            return {(("part", s.name),): v for s in self._slots if (v := value(s)) is not None}

        labels = tuple(sorted(self.info.items()))
        found: list[Metric] = [
            gauge("agent_info", "the agent and its site (always 1)", {labels: 1}),
            gauge(
                "agent_start_time_seconds", "when the agent started, Unix time", self._started_at
            ),
            gauge("agent_up", "1 when every part is up and healthy", int(self.status()[0])),
            gauge("part_up", "1 while the part is up", by_part(lambda s: int(s.state == "up"))),
            counter(
                "part_crashes_total", "times the part's run() failed", by_part(lambda s: s.crashes)
            ),
            counter(
                "part_restarts_total",
                "times the part was started again after a crash",
                by_part(lambda s: s.restarts),
            ),
            counter(
                "part_start_failures_total",
                "starts of the part that failed",
                by_part(lambda s: s.start_failures),
            ),
            gauge(
                "part_start_seconds",
                "how long the part's last start took",
                by_part(lambda s: s.start_s),
            ),
        ]
        errors: dict[Labels, float] = {}
        for slot in self._slots:
            if not isinstance(slot.part, ReportsMetrics):
                continue
            try:
                theirs = list(slot.part.metrics())
                for metric in theirs:
                    check(metric)
            except Exception as e:
                errors[(("part", slot.name),)] = errors.get((("part", slot.name),), 0) + 1
                if not slot.metrics_failed:
                    slot.metrics_failed = True
                    log.error(
                        "its metrics failed: %s",
                        _one_line(e),
                        exc_info=e,
                        extra={"part": slot.name},
                    )
                continue
            found += theirs
        for source in self._metric_sources:
            found += source()
        found.append(
            counter("part_metrics_errors_total", "scrapes where the part's metrics failed", errors)
        )
        return found


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()


def _arm_watchdog(seconds: float) -> None:
    """End the process with status 1 in `seconds` unless it has ended by then: a part
    that blocks the loop or ignores cancellation cannot keep the agent from stopping."""

    def fire() -> None:
        # Logging could block (a full pipe, a lock the stuck thread holds): give it a
        # moment on a thread of its own, then exit regardless.
        def say() -> None:
            log.error("did not stop within %.0f s: exiting now", seconds)
            _flush_logs()

        speaker = threading.Thread(target=say, daemon=True)
        speaker.start()
        speaker.join(0.5)
        os._exit(1)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
