"""SIGKILL loses nothing acknowledged: a producer process appends as fast as it can and
prints every event `append` acknowledged; the test kills it at random moments (seeded),
and after each kill every acknowledged event is in the file exactly once, with seqs
strictly increasing per stream, never reused across restarts. Each restart sends again
from a little before the last acknowledged event, as a node that missed its ack would,
so the duplicates must be recognised across the kill too."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from outbox_producer import STREAMS, stored_rows

PRODUCER = Path(__file__).with_name("outbox_producer.py")
CYCLES = 24


def run_until_killed(path: Path, starts: dict[str, int], delay_s: float) -> list[tuple[str, int]]:
    """Start the producer, let it run `delay_s` after its first acknowledgement, SIGKILL
    it; return the (stream, source_seq) of every complete line it printed."""
    producer = subprocess.Popen(
        [sys.executable, str(PRODUCER), str(path), json.dumps(starts)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Unbuffered: readline() below takes exactly one line off the pipe. A buffered
        # reader would take more, and communicate() reads the pipe itself, not that buffer.
        bufsize=0,
    )
    try:
        assert producer.stdout is not None
        first = producer.stdout.readline()  # blocks until the first acknowledgement
        time.sleep(delay_s)
        producer.send_signal(signal.SIGKILL)
        rest, errors = producer.communicate(timeout=30)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == -signal.SIGKILL, errors.decode(errors="replace")
    assert first, f"the producer printed nothing: {errors.decode(errors='replace')}"
    text = (first + rest).decode()
    lines = text.split("\n")[:-1]  # the last one is cut short (or empty)
    acked = []
    for line in lines:
        stream, seq = line.split()
        acked.append((stream, int(seq)))
    return acked


def test_sigkill_loses_nothing_acknowledged_and_stores_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    rng = random.Random(20261129)
    acked: set[tuple[str, int]] = set()
    highest_seq: dict[str, int] = {}
    starts = dict.fromkeys(STREAMS, 1)
    for cycle in range(CYCLES):
        new = run_until_killed(path, starts, rng.uniform(0.0, 0.08))
        acked.update(new)
        rows = stored_rows(path)  # as the next start finds the file: WAL and all
        keys = Counter((stream, source_seq) for _, stream, source_seq, _ in rows)
        assert [key for key, n in keys.items() if n > 1] == [], f"cycle {cycle}: stored twice"
        lost = acked - keys.keys()
        assert not lost, f"cycle {cycle}: acknowledged but not in the file: {sorted(lost)[:5]}"
        seqs: dict[str, list[int]] = {}
        for _, stream, _, seq in rows:  # in row order
            seqs.setdefault(stream, []).append(seq)
        for stream, got in seqs.items():
            assert got == sorted(set(got)), f"cycle {cycle}: {stream} seqs not increasing"
            # Nothing leaves the file here, so seqs are never reused: they only grow.
            assert got[-1] >= highest_seq.get(stream, 0)
            highest_seq[stream] = got[-1]
        # Restart a little before the last acknowledged event of each stream: those
        # already stored are retransmissions.
        for stream in STREAMS:
            last = max((s for st, s in acked if st == stream), default=0)
            starts[stream] = max(1, last + 1 - rng.randint(0, 6))
    assert len(acked) > CYCLES * len(STREAMS)  # it did get work done between kills
