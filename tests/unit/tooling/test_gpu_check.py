"""aot_handbook.tooling.gpu_check: the checks run on CPU; without a GPU `make gpu-check` skips cleanly."""

import pytest
import torch

from aot_handbook.tooling.gpu_check import CheckResult, _run, render_table, run_checks
from tests.helpers import run_make

CUDA_ONLY = {"flash-attention fallback + warning", "paged_adamw_32bit", "4-bit QLoRA load + step", "vLLM generation",
             "padding-free: flash varlen, flex, SDPA segments"}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: make gpu-check would run the real checks")
def test_make_gpu_check_without_gpu_skips_cleanly(tmp_path):
    proc = run_make(tmp_path, "gpu-check")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "no GPU: skipped"


@pytest.mark.slow
def test_checks_run_on_cpu():
    results = run_checks(device="cpu", dtype=torch.float32, shape="toy")
    by_name = {r.name: r for r in results}
    assert {name for name, r in by_name.items() if r.status == "skipped"} == CUDA_ONLY
    assert all(by_name[name].detail == "needs CUDA" for name in CUDA_ONLY)
    ok = [r for r in results if r.status != "skipped"]
    assert all(r.status == "ok" for r in ok), [(r.name, r.detail) for r in ok if r.status != "ok"]
    for arch in ("llama", "mistral"):
        for variant in ("aot_paired", "aot_unpaired", "aot_unpaired (unpaired rows)"):
            assert f"{arch} {variant} float32 LoRA+GC" in by_name
        assert "one row per pair" in by_name[f"{arch} aot_paired float32 LoRA+GC"].detail  # packed, not TRL's layout
        packing = by_name[f"{arch} one row per pair = two rows (SDPA)"].detail
        assert float(packing.split()[2]) <= 1e-5  # "relative error 7.9e-08 (tolerance ...)"
    table = render_table(results)
    assert all(r.name in table for r in results)


@pytest.mark.slow
def test_failed_check_is_reported_and_table_renders():
    results = []
    _run("passes", lambda: "fine", results)
    _run("breaks", lambda: 1 / 0, results)
    _run("absent", lambda: "never called", results, needs="vllm not installed")
    assert [(r.name, r.status) for r in results] == [("passes", "ok"), ("breaks", "FAIL"), ("absent", "skipped")]
    assert results[1].detail == "ZeroDivisionError: division by zero"
    results.append(CheckResult("memory", "ok", "x", 1.25, 1234.4))
    lines = render_table(results).splitlines()
    assert lines[0].startswith("| check ") and lines[0].endswith("| detail |") and set(lines[1]) <= {"|", "-"}
    assert len({line.index("| ok") if "| ok" in line else None for line in lines[2:]} - {None}) == 1  # aligned
    assert "| absent | skipped | -" in lines[4].replace("  ", " ").replace("  ", " ")
    assert lines[5].split("|")[4].strip() == "1234" and lines[5].split("|")[3].strip() == "1.2 s"
