"""Soak the tests: run them N times in a row and count failures per test.

    ./run soak [--runs N] [--hog] [--reports DIR] [PYTEST ARGS...]

Each run is a fresh pytest process (`-p no:cacheprovider`, a JUnit XML report, its
output in a log beside the report), by default over the HIL and edge tests; PYTEST ARGS
replace that default (`./run soak --runs 20 hil_tests/tests -k uart`; options after
`--` all go to pytest). `--hog` keeps one busy-looping process per core running for the
whole soak, for timing bugs that only show on a loaded machine. After each run one line;
at the end a table of the tests that failed (failed runs / N, the failure's first line).
Exit status 0 only if every run passed; 1 if any test failed; 130 when interrupted.

A development tool (not installed with the package). Nothing it starts outlives it: each
pytest run is a process group of its own, interrupted like Ctrl-C would (then SIGKILLed
after a grace period) when the tool is interrupted, fails or dies, and whatever a run
leaves behind is killed and reported; the hogs are killed at the end and also stop by
themselves once the tool is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = tuple(str(REPO / d) for d in ("hil_tests/tests", "edge/tests"))
#: How long an interrupted pytest may take to tear down before it is killed.
STOP_GRACE_S = 30.0
#: A hog burns CPU and ends by itself once the tool is gone (its parent changed).
HOG = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n" + (
    "    for _ in range(200_000):\n        pass\n"
)
RUN_PROBLEM = "(pytest run)"
LEFT_BEHIND = "(processes left behind)"
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Failure:
    count: int = 0
    first_line: str = ""


@dataclass
class Outcome:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    #: test id -> the failure's first line, for every test that failed or errored
    failures: dict[str, str] = field(default_factory=dict)


@dataclass
class Tally:
    runs: int = 0
    failures: dict[str, Failure] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.runs += 1
        for test, line in outcome.failures.items():
            entry = self.failures.setdefault(test, Failure(first_line=line))
            entry.count += 1


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP reached the tool."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """For cleanup that must run to its end."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _signal_when_orphaned(signum: int) -> Callable[[], None]:
    """A preexec_fn: the child gets `signum` when the tool dies, even by SIGKILL (Linux)."""

    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return preexec


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    after_dashes: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, after_dashes = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="./run soak",
        description="Run the tests N times in a row and count failures per test.",
        epilog="example: ./run soak --runs 20 --hog hil_tests/tests -k uart",
        allow_abbrev=False,
    )
    parser.add_argument("--runs", type=int, default=10, metavar="N", help="runs (default 10)")
    parser.add_argument(
        "--hog", action="store_true", help="one busy-looping process per core meanwhile"
    )
    parser.add_argument(
        "--reports",
        type=Path,
        metavar="DIR",
        help="keep the reports and logs here (default: a temporary directory, "
        "removed when every run passed)",
    )
    args, pytest_args = parser.parse_known_args(argv)
    if args.runs < 1:
        parser.error("--runs: give 1 or more")
    return args, [*pytest_args, *after_dashes] or list(DEFAULT_TESTS)


def node_id(case: ET.Element) -> str:
    """pytest's node id from a JUnit <testcase> (xunit1: it has the file)."""
    file = case.get("file", "")
    classname = case.get("classname", "")
    name = case.get("name", "")
    module = file.removesuffix(".py").replace("/", ".")
    if not file:
        return ".".join(p for p in (classname, name) if p)
    if not classname and name == module:  # a collection error: the module itself
        return file
    parts = [file]
    if classname.startswith(module + "."):
        parts += classname[len(module) + 1 :].split(".")
    return "::".join([*parts, name])


def _first_line(problem: ET.Element) -> str:
    for text in (problem.get("message"), problem.text):
        for line in (text or "").splitlines():
            if line.strip():
                return line.strip()
    return problem.tag


def read_report(path: Path) -> Outcome:
    outcome = Outcome()
    for case in ET.parse(path).getroot().iter("testcase"):
        failure = case.find("failure")
        error = case.find("error")
        if failure is not None:
            outcome.failed += 1
        elif error is not None:
            outcome.errors += 1
        elif case.find("skipped") is not None:
            outcome.skipped += 1
        else:
            outcome.passed += 1
        problem = failure if failure is not None else error
        if problem is not None:
            outcome.failures.setdefault(node_id(case), _first_line(problem))
    return outcome


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _kill_group(pgid: int) -> list[int]:
    """SIGKILL what is left of a process group; returns the pids it held."""
    left = _group_members(pgid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return left


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Interrupt a pytest run like Ctrl-C would; kill its group if it does not end."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except (subprocess.TimeoutExpired, Interrupted):
        pass  # no more grace (a second Ctrl-C cuts it short)
    with _signals_ignored():
        _kill_group(proc.pid)
        proc.wait()


def run_once(index: int, pytest_args: Sequence[str], reports: Path) -> tuple[Outcome, float]:
    report = reports / f"run-{index:03d}.xml"
    log = reports / f"run-{index:03d}.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={report}",
        *pytest_args,
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # the tool runs one thread, so preexec_fn is safe here
            preexec_fn=_signal_when_orphaned(signal.SIGINT),  # noqa: PLW1509
        )
        try:
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
    seconds = time.monotonic() - started
    outcome = read_report(report) if report.is_file() else Outcome()
    left = _kill_group(proc.pid)
    if left:
        outcome.failures[LEFT_BEHIND] = f"pids {' '.join(map(str, left))} (killed)"
    if code not in (0, 1) or (code == 1 and not outcome.failures):
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        last = tail[-1].strip() if tail else "no output"
        outcome.failures[RUN_PROBLEM] = f"pytest exited with {code}: {last}"
    return outcome, seconds


@contextlib.contextmanager
def hogs(enabled: bool) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(_cores() if enabled else 0):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-S", "-c", HOG, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # the terminal's Ctrl-C is for the tool
                )
            )
        yield procs
    finally:
        with _signals_ignored():
            for proc in procs:
                proc.kill()
            for proc in procs:
                proc.wait()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def table(tally: Tally) -> str:
    rows = sorted(tally.failures.items(), key=lambda item: (-item[1].count, item[0]))
    head = ("test", "failed", "first line of the failure")
    cells = [(test, f"{f.count}/{tally.runs}", f.first_line[:120]) for test, f in rows]
    width = [max(len(row[i]) for row in [head, *cells]) for i in range(2)]
    return "\n".join(
        f"{a:<{width[0]}}  {b:>{width[1]}}  {c}".rstrip() for a, b, c in [head, *cells]
    )


def soak(tally: Tally, runs: int, hog: bool, reports: Path, pytest_args: Sequence[str]) -> None:
    with hogs(hog) as hog_procs:
        if hog_procs:
            pids = " ".join(str(p.pid) for p in hog_procs)
            print(f"hogs: {len(hog_procs)} busy processes (pids {pids})", flush=True)
        for i in range(1, runs + 1):
            outcome, seconds = run_once(i, pytest_args, reports)
            tally.add(outcome)
            notes = [
                outcome.failures[k] for k in (RUN_PROBLEM, LEFT_BEHIND) if k in outcome.failures
            ]
            print(
                f"run {i}/{runs}: {outcome.passed} passed, {outcome.failed} failed, "
                f"{outcome.errors} errors, {outcome.skipped} skipped, {seconds:.1f} s"
                + "".join(f"; {note}" for note in notes),
                flush=True,
            )


def main(argv: Sequence[str] | None = None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    keep = args.reports is not None
    reports: Path = args.reports or Path(tempfile.mkdtemp(prefix="kommune-soak-"))
    reports.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.runs} runs of pytest {' '.join(pytest_args)}", flush=True)
    tally = Tally()
    try:
        soak(tally, args.runs, args.hog, reports, pytest_args)
    except Interrupted as e:
        print(f"soak: interrupted ({e}) after {tally.runs} runs; reports in {reports}")
        if tally.failures:
            print(table(tally))
        return 130
    if not tally.failures:
        print(f"no failures in {tally.runs} runs")
        if not keep:
            shutil.rmtree(reports, ignore_errors=True)
        return 0
    print(f"\nfailures in {tally.runs} runs (reports and logs in {reports}):")
    print(table(tally))
    return 1


if __name__ == "__main__":
    sys.exit(main())
