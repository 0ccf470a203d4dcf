"""Speed and calibration of aot_handbook.dominance (docs/DOMINANCE.md).

    python benchmarks/bench_dominance.py speed       # k=8 n=5000 B=1000 relative test; k=4 n=1000 d=3 multivariate
    python benchmarks/bench_dominance.py simulate    # the calibration table of docs/DOMINANCE.md

Run with OMP_NUM_THREADS=1 (or 2) on a quiet machine; timings on a shared one are indicative only.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from statistics import NormalDist

import numpy as np
import torch

from aot_handbook import dominance as D


def speed(profile: bool) -> None:
    rng = np.random.default_rng(0)
    k, n = 8, 5000
    z = rng.normal(0, 1, n)
    scores = {f"m{i}": z + rng.normal(0.05 * i, 1, n) for i in range(k)}
    prof = cProfile.Profile() if profile else None
    t, c = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    res = D.relative_test(scores, n_boot=1000, paired=True, progress=True)
    if prof:
        prof.disable()
    print(f"univariate relative test k={k} n={n} B=1000 paired: {time.perf_counter() - t:.1f} s wall, "
          f"{time.process_time() - c:.1f} s CPU; "
          f"ranking {res.ranking}")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(8)

    k, n, d = 4, 1000, 3
    samples = {f"m{i}": rng.normal(0.1 * i, 1, (n, d)) for i in range(k)}
    t, c = time.perf_counter(), time.process_time()
    mv = D.multivariate_relative(samples, paired=False)
    print(f"multivariate relative k={k} n={n} d={d} (logistic beta=10, reg=0.05, CLT interval, one solve per pair "
          f"of models): {time.perf_counter() - t:.1f} s wall, {time.process_time() - c:.1f} s CPU; "
          f"eps {np.round(mv.eps, 3)} se {np.round(mv.se, 4)}")


def _eps_normal(c: float) -> float:
    N = NormalDist()
    return ((1 + c * c) * (1 - N.cdf(c)) - c * N.pdf(c)) / (1 + c * c)


def simulate(reps: int) -> None:
    rng = np.random.default_rng(1)
    thr = _eps_normal(0.5)
    print("| test | scenario | n | rejection rate (normal CI / paper) | rejection rate (ours) |")
    print("|---|---|---|---|---|")
    for c, label in [(0.5, f"boundary: true eps = threshold = {thr:.3f}"), (0.25, "inside H0: true eps 0.310")]:
        for n in (200, 500):
            rates = np.zeros(2)
            for r in range(reps):
                x, y = rng.normal(c, 1, n), rng.normal(0, 2, n)
                for q, interval in enumerate(("normal", "percentile")):
                    test = D.almost_dominance_test(x, y, threshold=thr, n_boot=200, seed=r, interval=interval)
                    rates[q] += test.reject
            print(f"| absolute, alpha=0.05 | {label} | {n} | {rates[0] / reps:.3f} | {rates[1] / reps:.3f} |")
    for shift in (0.2, 0.25):
        hits = np.zeros(2)
        for r in range(reps // 2):
            x, y = rng.normal(shift, 1, 500), rng.normal(0, 1, 500)
            for q, interval in enumerate(("normal", "percentile")):
                hits[q] += D.almost_dominance_test(x, y, threshold=0.3, n_boot=200, seed=r, interval=interval).reject
        print(f"| absolute, H0 eps >= 0.3 | power, N({shift},1) vs N(0,1) | 500 | {2 * hits[0] / reps:.3f} | "
              f"{2 * hits[1] / reps:.3f} |")
    for paired in (True, False):
        for n in (100, 500):
            eq = np.zeros(2)
            for r in range(reps):
                z = rng.normal(0, 1, n) if paired else np.zeros(n)
                s = {m: z + rng.normal(mu, 1, n) for m, mu in zip("abcd", (0.0, 0.0, 1.0, -1.0))}
                res = D.relative_test(s, n_boot=200, paired=paired, seed=r)
                zz = res.delta / np.where(res.delta_se > 0, res.delta_se, np.inf)
                iu = np.triu_indices(4, 1)
                naive = D.adjust_p(np.array([2 * (1 - NormalDist().cdf(abs(v))) for v in zz[iu]]), "holm")
                eq += [naive[0] < 0.05, res.beats("a", "b") or res.beats("b", "a")]
            print(f"| relative k=4, alpha=0.05, Holm | boundary: a = b (c, d at +-1 sd), "
                  f"{'paired' if paired else 'unpaired'} | {n} | {eq[0] / reps:.3f} | {eq[1] / reps:.3f} |")
    hits = 0
    for r in range(reps // 4):
        s = {m: rng.normal(mu, 1, 500) for m, mu in zip("abcd", (0, 0, 0.25, -0.25))}
        hits += D.relative_test(s, n_boot=200, seed=r).beats("c", "d")
    print(f"| relative k=4, alpha=0.05, Holm | power, c - d = 0.5 sd, unpaired | 500 | - | {4 * hits / reps:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "simulate"])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    speed(a.profile) if a.what == "speed" else simulate(a.reps)


if __name__ == "__main__":
    main()
