"""The host: parts start in order and stop in reverse, also when one fails to start or
to stop; crashes are counted and handled by the part's policy; stopping is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kommune.edge.agent.metrics import Metric, counter, gauge
from kommune.edge.agent.process import AgentError, Backoff, Host, OnCrash, PartError

FAST = Backoff(initial_s=0.01, factor=2.0, max_s=0.04, reset_after_s=60.0)


class Fake:
    """A part that writes what happens to it in `events`, and fails where told."""

    def __init__(
        self,
        name: str,
        events: list[str],
        *,
        fail_start: BaseException | None = None,
        fail_stop: BaseException | None = None,
        hang_start: bool = False,
        hang_stop: bool = False,
    ) -> None:
        self.name = name
        self.events = events
        self.fail_start = fail_start
        self.fail_stop = fail_stop
        self.hang_start = hang_start
        self.hang_stop = hang_stop
        self.up = asyncio.Event()

    async def start(self) -> None:
        self.events.append(f"start {self.name}")
        if self.hang_start:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.events.append(f"start cancelled {self.name}")
                raise
        if self.fail_start:
            raise self.fail_start
        self.up.set()

    async def stop(self) -> None:
        self.events.append(f"stop {self.name}")
        self.up.clear()
        if self.hang_stop:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.events.append(f"stop cancelled {self.name}")
                raise
        if self.fail_stop:
            raise self.fail_stop


class Runner(Fake):
    """A part with run(): it ends when stopped, or crashes when `crash` is set."""

    def __init__(self, name: str, events: list[str], **kw: Any) -> None:
        super().__init__(name, events, **kw)
        self.crash: asyncio.Queue[BaseException | None] = asyncio.Queue()
        self.stopped = asyncio.Event()
        self.runs = 0

    async def start(self) -> None:
        self.stopped.clear()
        await super().start()

    async def run(self) -> None:
        self.runs += 1
        self.events.append(f"run {self.name}")
        crash = asyncio.ensure_future(self.crash.get())
        stopped = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait({crash, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            crash.cancel()
            stopped.cancel()
        if crash.done() and not crash.cancelled():
            error = crash.result()
            if error is not None:
                raise error
            return  # a run() that just returns

    async def stop(self) -> None:
        self.stopped.set()
        await super().stop()


async def run_host(host: Host) -> asyncio.Task[None]:
    return asyncio.create_task(host.run(handle_signals=False, hard_exit=False))


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `condition()` holds, with a deadline. It looks after every millisecond
    of the loop's work: the host's phases and the fakes' counters are plain attributes."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 -- a condition on plain attributes
            await asyncio.sleep(0.001)


async def test_parts_start_in_order_and_stop_in_reverse() -> None:
    events: list[str] = []
    host = Host()
    parts = [Fake(n, events) for n in "abc"]
    for p in parts:
        host.add(p)
    task = await run_host(host)
    await until(lambda: host.phase == "up")
    assert host.status()[0]
    host.request_stop("test")
    await task
    assert events == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert host.phase == "stopped"
    assert not host.status()[0]


async def test_a_part_that_fails_to_start_stops_those_before_it() -> None:
    events: list[str] = []
    host = Host()
    host.add(Fake("a", events))
    host.add(Fake("b", events))
    host.add(Fake("c", events, fail_start=OSError(98, "Address already in use")))
    host.add(Fake("d", events))
    task = await run_host(host)
    with pytest.raises(AgentError, match=r"^c did not start: OSError: \[Errno 98\] Address"):
        await task
    assert events == ["start a", "start b", "start c", "stop b", "stop a"]


async def test_a_part_error_is_shown_as_it_is() -> None:
    host = Host()
    host.add(Fake("http", [], fail_start=PartError("cannot listen on 1.2.3.4:5 (health.bind)")))
    with pytest.raises(AgentError) as caught:
        await host.run(handle_signals=False, hard_exit=False)
    assert str(caught.value) == "http did not start: cannot listen on 1.2.3.4:5 (health.bind)"


async def test_a_start_that_does_not_answer_times_out_and_is_cancelled() -> None:
    events: list[str] = []
    host = Host()
    host.add(Fake("a", events))
    host.add(Fake("slow", events, hang_start=True), start_timeout_s=0.05)
    with pytest.raises(AgentError, match=r"^slow did not start: no answer within 0.05 s$"):
        await host.run(handle_signals=False, hard_exit=False)
    assert events == ["start a", "start slow", "start cancelled slow", "stop a"]


async def test_a_stop_asked_for_while_a_part_starts_cancels_that_start() -> None:
    events: list[str] = []
    host = Host()
    host.add(Fake("a", events))
    host.add(Fake("slow", events, hang_start=True))
    task = await run_host(host)
    await until(lambda: "start slow" in events)
    host.request_stop("test")
    await task  # a stop while starting is not a failure
    assert events == ["start a", "start slow", "start cancelled slow", "stop a"]


async def test_a_part_that_fails_to_stop_does_not_keep_the_others_running() -> None:
    events: list[str] = []
    host = Host()
    host.add(Fake("a", events))
    host.add(Fake("b", events, fail_stop=RuntimeError("disk gone")))
    host.add(Fake("c", events))
    task = await run_host(host)
    await until(lambda: host.phase == "up")
    host.request_stop("test")
    with pytest.raises(AgentError, match=r"^stopped, but b did not stop cleanly"):
        await task
    assert events[-3:] == ["stop c", "stop b", "stop a"]
    assert host.status()[1]["parts"]["b"]["state"] == "stop failed"
    assert "disk gone" in host.status()[1]["parts"]["b"]["last_error"]


async def test_a_stop_that_hangs_gets_its_share_of_the_budget_then_is_cancelled() -> None:
    events: list[str] = []
    host = Host(stop_timeout_s=0.4)
    host.add(Fake("a", events))
    host.add(Fake("b", events))
    host.add(Fake("stuck", events, hang_stop=True))
    task = await run_host(host)
    await until(lambda: host.phase == "up")
    loop = asyncio.get_running_loop()
    began = loop.time()
    host.request_stop("test")
    with pytest.raises(AgentError, match="stuck did not stop cleanly"):
        await task
    took = loop.time() - began
    assert events[-4:] == ["stop stuck", "stop cancelled stuck", "stop b", "stop a"]
    # A third of 0.4 s for the stuck part, then the others at once: within the budget
    # (plus the grace a cancelled stop has to unwind).
    assert took < 0.4 + 0.5
    assert host.status()[1]["parts"]["stuck"]["last_error"] == "did not stop within 0.1 s"


async def test_a_part_with_more_stop_weight_gets_more_of_the_budget() -> None:
    events: list[str] = []
    host = Host(stop_timeout_s=0.4)
    host.add(Fake("a", events))
    host.add(Fake("drains", events, hang_stop=True), stop_weight=3.0)
    task = await run_host(host)
    await until(lambda: host.phase == "up")
    host.request_stop("test")
    with pytest.raises(AgentError):
        await task
    # Three quarters of the budget: 0.3 s of 0.4 (shown to a tenth of a second).
    assert host.status()[1]["parts"]["drains"]["last_error"] == "did not stop within 0.3 s"
    assert events[-2:] == ["stop cancelled drains", "stop a"]


async def test_a_crashed_part_is_restarted_with_backoff_and_counted() -> None:
    events: list[str] = []
    host = Host()
    host.add(Fake("a", events))
    part = Runner("r", events)
    host.add(part, backoff=FAST)
    task = await run_host(host)
    await until(lambda: part.runs == 1)
    for i in range(3):
        part.crash.put_nowait(RuntimeError(f"boom {i}"))
        await until(lambda i=i: part.runs == i + 2)  # type: ignore[misc]
    await until(lambda: host.status()[0])
    doc = host.status()[1]
    assert doc["parts"]["r"] == {
        "state": "up",
        "crashes": 3,
        "restarts": 3,
        "last_error": "RuntimeError: boom 2",
        "ok": True,
    }
    host.request_stop("test")
    await task
    assert events == [
        "start a",
        "start r",
        "run r",
        *["stop r", "start r", "run r"] * 3,
        "stop r",
        "stop a",
    ]
    text = {m.name: m for m in host.metrics()}
    assert text["part_crashes_total"].samples[(("part", "r"),)] == 3
    assert text["part_restarts_total"].samples[(("part", "r"),)] == 3


async def test_restarts_back_off_and_a_failed_restart_is_retried() -> None:
    events: list[str] = []
    host = Host()
    part = Runner("r", events)
    host.add(part, backoff=FAST)
    task = await run_host(host)
    await until(lambda: part.runs == 1)
    part.fail_start = OSError("port busy")
    part.crash.put_nowait(RuntimeError("boom"))
    await until(lambda: events.count("start r") >= 4)  # the first, then failed restarts
    assert host.status()[1]["parts"]["r"]["state"] in ("restarting", "starting")
    assert not host.status()[0]  # not healthy while it is down
    part.fail_start = None
    await until(lambda: part.runs == 2)
    assert host.status()[0]
    metrics = {m.name: m for m in host.metrics()}
    assert metrics["part_start_failures_total"].samples[(("part", "r"),)] >= 3
    host.request_stop("test")
    await task


async def test_a_run_that_returns_counts_as_a_crash() -> None:
    events: list[str] = []
    host = Host()
    part = Runner("r", events)
    host.add(part, backoff=FAST)
    task = await run_host(host)
    await until(lambda: part.runs == 1)
    part.crash.put_nowait(None)
    await until(lambda: part.runs == 2)
    assert host.status()[1]["parts"]["r"]["last_error"] == "its run() returned"
    host.request_stop("test")
    await task


async def test_a_crash_of_a_stop_agent_part_stops_the_agent() -> None:
    events: list[str] = []
    host = Host()
    host.add(Fake("a", events))
    part = Runner("store", events)
    host.add(part, on_crash=OnCrash.STOP_AGENT)
    host.add(Fake("c", events))
    task = await run_host(host)
    await until(lambda: host.phase == "up")
    part.crash.put_nowait(OSError(5, "Input/output error"))
    with pytest.raises(AgentError) as caught:
        await task
    assert str(caught.value) == (
        "store crashed (OSError: [Errno 5] Input/output error); its policy stops the agent"
    )
    assert events[-3:] == ["stop c", "stop store", "stop a"]


class Reporting(Fake):
    def __init__(self, name: str, health: Any, metrics: Any) -> None:
        super().__init__(name, [])
        self._health = health
        self._metrics = metrics

    def health(self) -> Any:
        if isinstance(self._health, Exception):
            raise self._health
        return self._health

    def metrics(self) -> Any:
        if isinstance(self._metrics, Exception):
            raise self._metrics
        return self._metrics


@pytest.mark.parametrize(
    ("health", "healthy"),
    [
        ({"connected": True}, True),
        ({"ok": False, "why": "no disk"}, False),
        (RuntimeError("oops"), False),
    ],
)
async def test_a_part_decides_whether_it_is_healthy(health: Any, healthy: bool) -> None:
    host = Host(info={"agent": "a1", "site": "s"})
    host.add(Reporting("p", health, []))
    task = await run_host(host)
    await until(lambda: host.phase == "up")
    ok, doc = host.status()
    assert ok is healthy
    assert doc["status"] == ("up" if healthy else "degraded")
    assert (doc["agent"], doc["site"]) == ("a1", "s")
    assert doc["parts"]["p"]["ok"] is healthy
    host.request_stop("test")
    await task


async def test_metrics_of_a_part_that_fails_are_left_out_and_counted() -> None:
    good: list[Metric] = [gauge("store_rows", "rows", 4)]
    host = Host()
    host.add(Reporting("good", {}, good))
    host.add(Reporting("broken", {}, RuntimeError("no")))
    host.add(Reporting("badname", {}, [counter("bad name!", "x", 1)]))
    task = await run_host(host)
    await until(lambda: host.phase == "up")
    for _ in range(2):
        metrics = {m.name: m for m in host.metrics()}
    assert metrics["store_rows"].samples == {(): 4}
    assert "bad name!" not in metrics
    errors = metrics["part_metrics_errors_total"].samples
    assert errors == {(("part", "broken"),): 1, (("part", "badname"),): 1}
    host.request_stop("test")
    await task


def test_two_parts_with_one_name_are_refused() -> None:
    host = Host()
    host.add(Fake("a", []))
    with pytest.raises(ValueError, match="two parts are called 'a'"):
        host.add(Fake("a", []))


# -- signals and the hard bound, in a child process of their own ---------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from kommune.edge.agent import logs
    from kommune.edge.agent.process import AgentError, Host

    class Stuck:
        name = "stuck"
        async def start(self):
            pass
        async def stop(self):
            print("stopping", flush=True)
            while True:  # ignores cancellation: only the watchdog ends this
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass

    class Quick:
        name = "quick"
        async def start(self):
            print("up", flush=True)
        async def stop(self):
            pass

    logs.configure("json")
    host = Host(stop_timeout_s=float(sys.argv[1]))
    host.add(Stuck())
    host.add(Quick())
    try:
        asyncio.run(host.run())
    except AgentError as e:
        print(e, flush=True)
        sys.exit(1)
    """
)


def _child(stop_timeout_s: float) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(stop_timeout_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    return proc


def test_a_stop_that_ignores_cancellation_cannot_keep_the_process_alive() -> None:
    proc = _child(stop_timeout_s=1.0)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - began
    assert proc.returncode == 1, (out, err)
    assert "did not stop within 3 s: exiting now" in err
    assert 1.0 + 2.0 <= took < 1.0 + 2.0 + 2.0  # budget + grace, then the watchdog


def test_a_second_signal_stops_at_once() -> None:
    proc = _child(stop_timeout_s=60.0)
    assert proc.stdout is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "stopping\n"  # the first signal is being handled
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, (out, err)
    assert time.monotonic() - began < 5.0
    assert "SIGINT while stopping: exiting at once" in err
