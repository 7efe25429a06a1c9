"""tools/soak.py: N fresh pytest runs, a table of failures per test, nothing left running.

The soaked tests are throwaway files in tmp_path, so each soak takes a second or two.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil_tests.testing.processes import running

SOAK = Path(__file__).resolve().parents[1] / "soak.py"

PASSING = """
def test_passes():
    assert True
"""
FAILING = """
def test_fails():
    assert 6 * 7 == 41, "the answer drifted"
"""
LEAKING = """
import subprocess

def test_leaves_a_process_behind():
    subprocess.Popen(["sleep", "300"])
"""
SLEEPING = """
import os, pathlib, time

def test_sleeps():
    pathlib.Path({marker!r}).write_text(str(os.getpid()))
    time.sleep(120)
"""


def _tests(tmp_path: Path, **files: str) -> Path:
    tests = tmp_path / "tests"
    tests.mkdir()
    for name, text in files.items():
        (tests / f"{name}.py").write_text(text)
    return tests


def _command(tmp_path: Path) -> list[str]:
    return [sys.executable, str(SOAK), "--reports", str(tmp_path / "reports")]


def _soak(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(tmp_path), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _hog_pids(stdout: str) -> list[int]:
    match = re.search(r"^hogs: (\d+) busy processes \(pids ([\d ]+)\)$", stdout, re.M)
    assert match, stdout
    pids = [int(p) for p in match[2].split()]
    assert len(pids) == int(match[1]) == len(os.sched_getaffinity(0))
    return pids


def test_a_failing_test_is_tabled_with_its_count(tmp_path: Path) -> None:
    tests = _tests(tmp_path, test_pass=PASSING, test_fail=FAILING)
    proc = _soak(tmp_path, "--runs", "2", str(tests))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2
    for i, line in enumerate(runs, 1):
        assert re.fullmatch(rf"run {i}/2: 1 passed, 1 failed, 0 errors, 0 skipped, [\d.]+ s", line)
    # the table: a header, then one row per failed test (node ids relative to pytest's rootdir)
    head = next(i for i, line in enumerate(lines) if line.startswith("test "))
    rows = lines[head + 1 :]
    assert len(rows) == 1, proc.stdout
    assert re.fullmatch(
        r"tests/test_fail\.py::test_fails\s+2/2\s+AssertionError: the answer drifted", rows[0]
    )
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "run-001.log",
        "run-001.xml",
        "run-002.log",
        "run-002.xml",
    ]


def test_hogs_run_meanwhile_and_are_gone_afterwards(tmp_path: Path) -> None:
    tests = _tests(tmp_path, test_pass=PASSING)
    proc = _soak(tmp_path, "--runs", "2", "--hog", str(tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("no failures in 2 runs")
    hogs = _hog_pids(proc.stdout)
    assert not [pid for pid in hogs if running(pid)], "a hog outlived the soak"


def test_a_process_left_behind_is_killed_and_counted(tmp_path: Path) -> None:
    tests = _tests(tmp_path, test_leak=LEAKING)
    proc = _soak(tmp_path, "--runs", "1", str(tests))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    match = re.search(
        r"^\(processes left behind\)\s+1/1\s+pids (\d+) \(killed\)$", proc.stdout, re.M
    )
    assert match, proc.stdout
    deadline = time.monotonic() + 5
    while running(int(match[1])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(int(match[1]))


def test_an_interrupt_stops_the_run_and_the_hogs(tmp_path: Path) -> None:
    marker = tmp_path / "pytest-pid"
    tests = _tests(tmp_path, test_sleep=SLEEPING.format(marker=str(marker)))
    proc = subprocess.Popen(
        [*_command(tmp_path), "--runs", "3", "--hog", str(tests)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the soaked test never started"
        time.sleep(0.1)  # the pid is written
        pytest_pid = int(marker.read_text())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "soak: interrupted (SIGINT) after 0 runs" in out
    assert not running(pytest_pid), "the pytest run outlived the soak"
    assert not [pid for pid in _hog_pids(out) if running(pid)], "a hog outlived the soak"


@pytest.mark.parametrize("args", [["--runs", "0"], ["--runs", "x"]])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    proc = _soak(tmp_path, *args)
    assert proc.returncode == 2
    assert "--runs" in proc.stderr
