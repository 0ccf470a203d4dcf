#!/usr/bin/env python
"""Benchmarks: python scripts/bench.py [--quick] [--only trainer,cache,loss,generate] [--json out.json]

AOTTrainer vs TRL's DPOTrainer AOT (throughput, peak RSS, step-1 loss), the reference
log-prob cache over a tiny sweep, aot_loss scaling (hard / Sinkhorn / PAV sorts) and batched
vs one-at-a-time generation. Results and their meaning: BENCHMARKS.md.
"""

from aot_handbook.bench import main

if __name__ == "__main__":
    main()
