#!/usr/bin/env python
"""make gpu-check: bf16 AOT steps, one row per pair, flash-attention fallback, paged AdamW, QLoRA, vLLM,
peak memory, on one GPU (under 10 minutes). Without a GPU: prints "no GPU: skipped" and exits 0."""

import sys

from aot_handbook.gpu_check import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
