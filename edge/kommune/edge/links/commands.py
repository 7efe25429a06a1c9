"""Commands from the edge to nodes on one link: frames from `EDGE`, acked and
retransmitted for unicast, repeated without an ack for groups and broadcast.

    outcome = await commands.send(18, lamp.SetLevel(level=254, fade_ms=0))
    outcome.result        # "acked", "nacked" (outcome.code), "timeout", "unreachable"

`send` writes the first copy before it returns (so commands leave in the order they
were given) and gives back a task: await it for the `Outcome`, cancel it to stop the
retransmissions of a command a newer one replaced. The node's `Ack`/`Nack` reaches the
task through `answer()`, which the link handler calls for each answer frame.

Unicast: `FLAG_ACK_REQUESTED`; no answer within `ack_timeout_s`, the same bytes again
with `FLAG_RETRY` (same seq), the wait doubling up to `max_backoff_s`, until the answer
or `deadline_s`. `Nack(busy)` is "the same seq later": it waits as for a lost answer.
Group and broadcast: no ack (the protocol forbids acks from groups), the frame sent
`GROUP_COPIES` times `GROUP_GAP_S` apart, the repeats with `FLAG_RETRY`; a lamp acts on
each copy, which for a SetLevel is the same level again (a fade restarts from where it
is, a few ms later).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from kommune.protocols import frame as F
from kommune.protocols import runtime
from kommune.protocols.message import Message, encode_frame

log = logging.getLogger(__name__)

ACK_TIMEOUT_S: Final = 0.15
MAX_BACKOFF_S: Final = 1.0
DEADLINE_S: Final = 5.0
#: Copies of a group or broadcast frame, and the pause between them.
GROUP_COPIES: Final = 2
GROUP_GAP_S: Final = 0.03

#: link_commands_total{result}: how commands ended.
RESULTS: Final = ("acked", "nacked", "timeout", "unreachable", "sent", "cancelled")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a command ended. `result`: acked, nacked (with the Nack's `code`), timeout
    (no answer by the deadline), unreachable (a UDP node never heard: no address),
    sent (a group or broadcast frame: nobody answers)."""

    result: str
    dst: int
    seq: int
    sends: int
    code: int | None = None
    #: From the first copy to the answer (acked/nacked only).
    round_trip_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("acked", "sent")


@dataclass(slots=True)
class NodeHealth:
    """What the link knows of one node, for /healthz and /metrics."""

    last_heard: float | None = None  # time.time() of its last frame
    pending: int = 0
    commands: int = 0
    failures: int = 0  # nacked, timed out or unreachable
    retries: int = 0
    round_trip_s: float | None = None  # of its last acked command


@dataclass(eq=False, slots=True)
class _Pending:
    answer: asyncio.Future[tuple[int, int | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Commands:
    """The command side of one link (see the module docstring). `write(wire, node)`
    puts a frame on the line towards `node` (False: no way to reach it); `next_seq`
    numbers the edge's frames on this link."""

    def __init__(
        self,
        link_id: str,
        write: Callable[[bytes, int], bool],
        next_seq: Callable[[], int],
        nodes: dict[int, NodeHealth],
        *,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        deadline_s: float = DEADLINE_S,
    ) -> None:
        self.link_id = link_id
        self._write = write
        self._next_seq = next_seq
        self.nodes = nodes
        self.ack_timeout_s = ack_timeout_s
        self.max_backoff_s = max_backoff_s
        self.deadline_s = deadline_s
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self.results: Counter[str] = Counter()
        self.retries = 0
        self.stray_answers = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(
        self, dst: int, msg: Message, *, deadline_s: float | None = None
    ) -> asyncio.Task[Outcome]:
        """Send `msg` to `dst` (a node, a group address or BROADCAST): the first copy now,
        the rest (retransmissions, repeats) in the task returned."""
        seq = self._next_seq()
        deadline_s = self.deadline_s if deadline_s is None else deadline_s
        if F.is_unicast(dst):
            first = encode_frame(msg, dst=dst, seq=seq, flags=F.FLAG_ACK_REQUESTED)
            health = self.nodes.setdefault(dst, NodeHealth())
            health.commands += 1
            pending = _Pending()
            reached = self._write(first, dst)
            self._pending[(dst, seq)] = pending
            health.pending += 1
            coro = self._unicast(dst, msg, seq, pending, reached=reached, deadline_s=deadline_s)
        else:
            first = encode_frame(msg, dst=dst, seq=seq)
            coro = self._group(dst, msg, seq, reached=self._write(first, dst))
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        # (in a done callback: a task cancelled before its first step runs none of its code)
        task.add_done_callback(functools.partial(self._done, dst, seq))
        return task

    def answer(self, node: int, msg: runtime.Ack | runtime.Nack) -> bool:
        """A node's Ack or Nack; True if it answered a command waiting for it."""
        pending = self._pending.get((node, msg.acked_seq))
        if pending is None or pending.answer.done():
            self.stray_answers += 1  # a late answer to a retransmitted or given-up frame
            return False
        code = msg.code if isinstance(msg, runtime.Nack) else None
        pending.answer.set_result((msg.acked_seq, code))
        return True

    def close(self) -> None:
        """Stop every command under way (their tasks end cancelled)."""
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    # -- the tasks -------------------------------------------------------------------

    async def _unicast(
        self,
        dst: int,
        msg: Message,
        seq: int,
        pending: _Pending,
        *,
        reached: bool,
        deadline_s: float,
    ) -> Outcome:
        health = self.nodes[dst]
        began = time.monotonic()
        sends = 1
        if not reached:
            return self._failed(Outcome("unreachable", dst, seq, 0), health)
        again = encode_frame(msg, dst=dst, seq=seq, flags=F.FLAG_ACK_REQUESTED | F.FLAG_RETRY)
        wait_s = self.ack_timeout_s
        deadline = began + deadline_s
        while True:
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, min(wait_s, left))):
                    _, code = await asyncio.shield(pending.answer)
            except TimeoutError:
                pass
            else:
                if code == runtime.NACK_BUSY:
                    pending.answer = asyncio.get_running_loop().create_future()
                    await asyncio.sleep(min(wait_s, max(0.0, left)))
                else:
                    took = time.monotonic() - began
                    if code is None:
                        self.results["acked"] += 1
                        health.round_trip_s = took
                        return Outcome("acked", dst, seq, sends, None, took)
                    return self._failed(Outcome("nacked", dst, seq, sends, code, took), health)
            if time.monotonic() >= deadline:
                return self._failed(Outcome("timeout", dst, seq, sends), health)
            self._write(again, dst)
            sends += 1
            self.retries += 1
            health.retries += 1
            wait_s = min(wait_s * 2, self.max_backoff_s)

    def _failed(self, outcome: Outcome, health: NodeHealth) -> Outcome:
        self.results[outcome.result] += 1
        health.failures += 1
        return outcome

    async def _group(self, dst: int, msg: Message, seq: int, *, reached: bool) -> Outcome:
        if not reached:  # a UDP link that has heard no node yet
            self.results["unreachable"] += 1
            return Outcome("unreachable", dst, seq, 0)
        again = encode_frame(msg, dst=dst, seq=seq, flags=F.FLAG_RETRY)
        for _ in range(GROUP_COPIES - 1):
            await asyncio.sleep(GROUP_GAP_S)
            self._write(again, dst)
        self.results["sent"] += 1
        return Outcome("sent", dst, seq, GROUP_COPIES)

    def _done(self, dst: int, seq: int, task: asyncio.Task[Outcome]) -> None:
        self._tasks.discard(task)
        if self._pending.pop((dst, seq), None) is not None:
            self.nodes[dst].pending -= 1
        if task.cancelled():
            self.results["cancelled"] += 1
        elif task.exception() is not None:
            log.error("link %s: a command failed", self.link_id, exc_info=task.exception())


def describe(outcome: Outcome) -> str:
    """One word or two for logs and events: "acked", "nacked busy", "timeout"."""
    if outcome.result == "nacked" and outcome.code is not None:
        return f"nacked {runtime.nack_name(outcome.code)}"
    return outcome.result
