"""`kommune bench uplink`: one run gives every figure with sane relations between them, and
leaves nothing behind (its Mosquitto, its temporary directory), also when interrupted.
Small sizes: the goals are the bench's to measure, never asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil_tests.testing.processes import cmdline, descendants, running
from kommune.bench import report, uplink
from kommune.edge.northbound import Priority

KOMMUNE = str(Path(sys.executable).with_name("kommune"))

KEYS = {
    "ingest_events_per_s": int,
    "raw_sqlite_rows_per_s": int,
    "wire_bytes_per_event": float,
    "baseline_wire_bytes_per_event": float,
    "publishes_per_1000_events": float,
    "restart_to_first_publish_ms_1m": float,
}


def _environment(tmp: Path) -> dict[str, str]:
    tmp.mkdir()
    return {**os.environ, "TMPDIR": str(tmp)}


def _ours(tmp: Path) -> list[int]:
    """Processes running with a command line inside `tmp` (the bench's broker is)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and str(tmp) in cmdline(int(entry.name)):
            found.append(int(entry.name))
    return [pid for pid in found if running(pid)]


def test_one_run_gives_every_figure_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    proc = subprocess.run(
        [
            KOMMUNE,
            "bench",
            "uplink",
            "--json",
            "--events",
            "2000",
            "--restart-rows",
            "5000",
            "--report",
            str(tmp_path / "uplink.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_environment(tmp),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for key, kind in KEYS.items():
        assert isinstance(results[key], kind | int), (key, results[key])
        assert results[key] > 0, key
    assert results["baseline_wire_bytes_per_event"] > results["wire_bytes_per_event"]
    assert results["publishes_per_1000_events"] >= 1
    assert results["baseline_publishes_per_1000_events"] == 1000
    assert results["raw_sqlite_rows_per_s"] > 0
    assert results["ingest_fraction_of_raw"] == pytest.approx(
        results["ingest_events_per_s"] / results["raw_sqlite_rows_per_s"], abs=0.001
    )
    # The proxy's count holds the uplink's own (PUBLISH + PUBACK) and a little more.
    assert results["uplink_counted_wire_bytes_per_event"] <= results["wire_bytes_per_event"]
    assert (results["restart_rows"], results["wire_events"]) == (5000, 2000)
    assert (
        results["restart_to_first_publish_sent_ms_1m"] <= results["restart_to_first_publish_ms_1m"]
    )
    written = json.loads((tmp_path / "uplink.json").read_text())
    assert (written["suite"], written["results"]) == ("uplink", results)
    assert list(tmp.iterdir()) == []
    assert _ours(tmp) == []


def test_ctrl_c_stops_the_broker_and_removes_the_temporary_directory(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    bench = subprocess.Popen(
        [
            KOMMUNE,
            "bench",
            "uplink",
            "--events",
            "2000",
            "--restart-rows",
            "3000000",
            "--report",
            str(tmp_path / "uplink.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(tmp),
    )
    try:
        deadline = time.monotonic() + 60
        while not any("mosquitto" in cmdline(pid) for pid in descendants(bench.pid)):
            assert bench.poll() is None, bench.communicate()
            assert time.monotonic() < deadline, "the bench started no broker"
            time.sleep(0.05)
        time.sleep(0.5)  # into the measurement
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, err
    assert err.strip().endswith("kommune bench: interrupted")
    assert list(tmp.iterdir()) == []
    assert _ours(tmp) == []
    assert not (tmp_path / "uplink.json").exists()


def test_the_sizes_are_the_uplink_benchs_options() -> None:
    proc = subprocess.run(
        [KOMMUNE, "bench", "protocols", "--events", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (
        2,
        "kommune bench: error: --events is for the uplink suite, not protocols\n",
    )


def test_the_site_events_are_shaped_as_a_sites() -> None:
    events = uplink.site_events(4000)
    assert len(events) == 4000
    streams = {e.stream for e in events}
    assert len(streams) == uplink.STREAMS
    bays = [e for e in events if e.priority is Priority.OCCUPANCY]
    lamps = [e for e in events if e.priority is Priority.TELEMETRY]
    assert len(bays) == len(lamps) == 2000
    assert {e.value for e in bays} == {0, 1}
    assert {(e.name, e.unit) for e in lamps} == {("energy", "Wh")}
    by_stream: dict[str, list[int]] = {}
    for e in events:
        by_stream.setdefault(e.stream, []).append(e.time_ms)
    assert all(times == sorted(times) for times in by_stream.values())
    lists = uplink.small_lists(events)
    assert {len(chunk) for chunks in lists.values() for chunk in chunks} <= set(range(1, 11))
    assert sum(len(c) for chunks in lists.values() for c in chunks) == 4000


def test_the_table_says_pass_or_miss_beside_each_goal() -> None:
    results: report.Metrics = dict.fromkeys((m.key for m in uplink.SUITE.metrics), 1)
    results |= {"wire_bytes_per_event": 20, "restart_to_first_publish_ms_1m": 500}
    table = report.render(uplink.SUITE, results)
    lines = {line.split("  ")[0]: line for line in table.splitlines()[1:]}
    assert lines["bytes on the wire per event (TCP payload, both ways)"].endswith("MISS")
    assert lines["restart, restart_rows queued -> first PUBACK"].endswith("pass")
    assert table.splitlines()[1].split() == ["metric", "value", "goal", "met"]
