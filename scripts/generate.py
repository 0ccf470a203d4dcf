#!/usr/bin/env python
"""AlpacaEval generations of a run (or a model), in alpaca_eval's format; resumable.

    python scripts/generate.py runs/merlinite-7b-aot_unpaired --out results/merlinite-7b-aot_unpaired/outputs.json
    python scripts/generate.py runs/tiny-sft --instructions .cache/tiny/v2-seed0/data/eval_prompts.jsonl \
        --max-new-tokens 5
"""

import argparse
import logging

from aot_handbook.evaluation.common import RunInfo
from aot_handbook.evaluation.generation import generate_outputs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder (full model or LoRA adapter) or a model folder / hub id")
    p.add_argument("--instructions", default="tatsu-lab/alpaca_eval",
                   help="tatsu-lab/alpaca_eval or a .json/.jsonl file")
    p.add_argument("--out", default=None, help="default: results/<run name>/alpaca_eval_outputs.json")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = RunInfo.from_path(args.run)
    out = args.out or f"results/{run.name}/alpaca_eval_outputs.json"
    path = generate_outputs(run.model, out, adapter=run.adapter, generator=run.name, instructions=args.instructions,
                            limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
                            backend=args.backend, dtype=args.dtype, chat_template=run.chat_template)
    print(f"outputs: {path}")


if __name__ == "__main__":
    main()
