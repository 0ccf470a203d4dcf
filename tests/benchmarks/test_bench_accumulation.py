"""``make bench ARGS="--only accumulation"`` (benchmarks/bench_accumulation.py) in quick mode: it runs and prints
its two tables, by behaviour (no timings asserted)."""

import os
import subprocess
import sys

import bench  # benchmarks/bench.py (on the path: tests/benchmarks/conftest.py)
import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_quick_accumulation_section_prints_memory_and_time():
    proc = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--only", "accumulation"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800, env={**os.environ, **bench.OFFLINE_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = {line.split("|")[1].strip() + " " + line.split("|")[2].strip(): line for line in out.splitlines()
            if line.startswith("| 4 x ")}
    assert set(rows) == {"4 x 2 sorts 8", "4 x 2 sorts 4 at a time (micro_batch)", "4 x 1 sorts 4"}
    assert float(rows["4 x 1 sorts 4"].split("|")[5]) == 1.0  # the baseline's own ratio
    assert "| optimizer_batch |" in out and "| micro_batch     |" in out
    assert "optimizer_batch / micro_batch time per sample:" in out
