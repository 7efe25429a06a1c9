"""`kommune bench protocols`: frame codec speed on both interpreters, allocation per decode.

The workload (protocols_vm.py) is one file: CPython runs it in-process, the
real MicroPython VM runs it as a script, so both measure the same code path.
"""

from __future__ import annotations

import json
from pathlib import Path

from kommune.bench import protocols_vm
from kommune.bench.report import BenchError, Metric, Metrics, Suite

CPYTHON_FRAMES = 20_000
MICROPYTHON_FRAMES = 5_000
# A board-sized heap: the numbers should hold on an ESP32-class node.
MICROPYTHON_HEAP = "64K"


def run_cpython() -> float:
    rt = protocols_vm.RoundTrip()
    rt.once()
    return rt.frames_per_s(CPYTHON_FRAMES)


def run_micropython() -> dict[str, float]:
    from kommune.hil import vm
    from kommune.hil.paths import PROTOCOLS_ROOT

    script = Path(protocols_vm.__file__)
    try:
        proc = vm.run(
            [str(script), str(MICROPYTHON_FRAMES)],
            path=[PROTOCOLS_ROOT],
            heapsize=MICROPYTHON_HEAP,
            timeout_s=300,
        )
    except vm.VMError as e:
        raise BenchError(str(e)) from e
    if proc.returncode != 0:
        raise BenchError(f"MicroPython bench failed: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise BenchError(f"MicroPython bench printed no result: {proc.stdout!r}") from e
    return out


def run() -> Metrics:
    vm_result = run_micropython()
    return {
        "cpython_frames_per_s": round(run_cpython(), 1),
        "micropython_frames_per_s": round(vm_result["frames_per_s"], 1),
        "micropython_alloc_bytes_per_decode": vm_result["alloc_bytes_per_decode"],
    }


# A 17-byte SetLevel frame on a 115200-baud bus: ~680 frames/s at most.
_BUS = "> 680 (115200 baud bus)"

SUITE = Suite(
    name="protocols",
    metrics=(
        Metric("cpython_frames_per_s", "CPython: SetLevel frame encode+decode", "frames/s", _BUS),
        Metric(
            "micropython_frames_per_s",
            "MicroPython: SetLevel frame encode+decode",
            "frames/s",
            _BUS,
        ),
        Metric(
            "micropython_alloc_bytes_per_decode",
            "MicroPython: heap allocated per lamp command decoded",
            "B",
            "<= 64 B",
        ),
    ),
    run=run,
)
