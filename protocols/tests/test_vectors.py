"""Golden vectors: every case passes under CPython and under the MicroPython VM.

Both interpreters run the same runner and adapter files (protocols/vectors/),
so a codec that behaves differently on the device fails here.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any

import pytest

from kommune.hil import vm
from kommune.hil.paths import PROTOCOLS_ROOT, VECTORS_DIR

sys.path.insert(0, str(VECTORS_DIR))
import runner  # (protocols/vectors/runner.py, shared with MicroPython)


def _all_cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    cases = []
    for path in runner.vector_files(str(VECTORS_DIR)):
        doc = runner.load_file(path)
        short = path.rsplit("/", 1)[-1]
        cases += [(short, doc["adapter"], case["name"], case) for case in doc["cases"]]
    return cases


CASES = _all_cases()
IDS = [f"{f}::{n}" for f, _, n, _ in CASES]


def test_vector_files_are_well_formed() -> None:
    assert CASES, "no golden vectors found"
    seen: set[tuple[str, str]] = set()
    for file, _, name, case in CASES:
        assert (file, name) not in seen, f"duplicate vector name {name!r} in {file}"
        seen.add((file, name))
        shapes = {"hex", "op"} & case.keys()
        assert len(shapes) == 1, f"{file}::{name} needs exactly one of hex/op"
        assert ("error" in case) != ("fields" in case or "result" in case), f"{file}::{name}"


@pytest.mark.parametrize(("file", "adapter", "name", "case"), CASES, ids=IDS)
def test_vector_cpython(file: str, adapter: str, name: str, case: dict[str, Any]) -> None:
    assert runner.check_case(runner.load_adapter(adapter), case) is None


@cache
def _micropython_results() -> dict[tuple[str, str], dict[str, Any]]:
    proc = vm.run(
        ["runner.py", "."],
        path=[PROTOCOLS_ROOT, VECTORS_DIR],
        cwd=VECTORS_DIR,
        heapsize="2M",
        timeout_s=120,
    )
    assert proc.returncode == 0, f"MicroPython vector runner failed:\n{proc.stderr}{proc.stdout}"
    results = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        results[(row["file"], row["name"])] = row
    return results


@pytest.mark.micropython
@pytest.mark.parametrize(("file", "adapter", "name", "case"), CASES, ids=IDS)
def test_vector_micropython(file: str, adapter: str, name: str, case: dict[str, Any]) -> None:
    row = _micropython_results().get((file, name))
    assert row is not None, "the MicroPython runner did not report this case"
    assert row["ok"], row["message"]


def test_micropython_ran_every_case() -> None:
    assert set(_micropython_results()) == {(f, n) for f, _, n, _ in CASES}


@pytest.mark.parametrize("name", ["hmac", "token", "handshake", "audit"])
def test_lock_vectors_are_what_their_generator_computes(name: str) -> None:
    # The lock vectors are generated (gen_lock_vectors.py checks each case's
    # intended outcome); the committed files must not drift from it.
    import gen_lock_vectors as gen

    cases = getattr(gen, f"{name}_cases")()
    expected = json.loads(json.dumps({"adapter": name, "cases": cases}))
    assert runner.load_file(str(VECTORS_DIR / f"{name}.json")) == expected
