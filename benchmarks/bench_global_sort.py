"""Overhead of ``aot_global_sort`` (docs/MATH.md sec. 6): step time with the gather on vs off.

One multi-process run (torchrun, gloo, CPU) of ``AOTTrainer`` on the tiny offline model; the
option is switched every step (on, off, off, on, on, off, ...: interleaved and balanced, so
drift and machine load hit both modes alike), and the table reports the median over the
timed steps of each mode. Also timed: the AOT objective alone (gather + sort + loss, forward)
and a bare ``gather_with_grad`` of u and v plus its backward.

    python benchmarks/bench_global_sort.py                # re-launches itself under torchrun, 2 processes
    python benchmarks/bench_global_sort.py --nproc 3 --batch 32 --steps 30

Numbers on a loaded 2-core CPU machine are noisy: read the IQR column.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="processes (data-parallel ranks)")
    p.add_argument("--batch", type=int, default=16, help="pairs per device and step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    p.add_argument("--variant", default="aot_unpaired", choices=["aot_paired", "aot_unpaired"])
    p.add_argument("--tiny-root", default=None, help="folder of the tiny assets (default: a temporary one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return p.parse_args(argv)


def _launch(args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
           "--master_addr=127.0.0.1", f"--master_port={port}", __file__, *sys.argv[1:]]
    return subprocess.call(cmd, env=env)


def _q(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def _summary(xs):
    return statistics.median(xs) * 1e3, (_q(xs, 0.75) - _q(xs, 0.25)) * 1e3


def _worker(args):
    import torch
    import torch.distributed as dist
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from aot_handbook.configs import AOTConfig
    from aot_handbook.io import read_jsonl
    from aot_handbook.tasks.tiny.arithmetic import ensure_tiny_assets
    from aot_handbook.trainers import AOTTrainer, gather_with_grad

    torch.set_num_threads(args.threads)
    root = args.tiny_root or os.path.join(tempfile.gettempdir(), "aot_bench_tiny")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        tiny = ensure_tiny_assets(root)
    dist.barrier()
    tiny = ensure_tiny_assets(root)

    rows = read_jsonl(tiny["paired_train"])
    n_steps = args.warmup + 2 * args.steps
    # The mode of each step: warm-up alternates too; then blocks "on off" / "off on" in turn.
    modes = [i % 2 == 0 for i in range(args.warmup)]
    for i in range(args.steps):
        modes += [True, False] if i % 2 == 0 else [False, True]
    step_times = {True: [], False: []}
    objective_times = {True: [], False: []}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            a.aot_global_sort = modes[state.global_step]
            dist.barrier()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            dist.barrier()
            if state.global_step > args.warmup:  # global_step was incremented before on_step_end
                step_times[modes[state.global_step - 1]].append(time.perf_counter() - self.t0)

    class TimedAOT(AOTTrainer):
        def _aot_objective(self, u, v, mode):
            t0 = time.perf_counter()
            out = super()._aot_objective(u, v, mode)
            if self.state.global_step >= args.warmup:
                objective_times[bool(self.args.aot_global_sort)].append(time.perf_counter() - t0)
            return out

    config = AOTConfig(output_dir=os.path.join(root, "bench_out"), loss_type=args.variant,
                       per_device_train_batch_size=args.batch, max_steps=n_steps, learning_rate=1e-4,
                       beta=0.1, bf16=False, use_cpu=True, report_to=[], save_strategy="no",
                       gradient_checkpointing=False, logging_steps=10**6, seed=0, disable_tqdm=True,
                       dataloader_num_workers=0)
    need = n_steps * args.batch * world
    trainer = TimedAOT(model=AutoModelForCausalLM.from_pretrained(tiny["base_model"]),
                       ref_model=AutoModelForCausalLM.from_pretrained(tiny["base_model"]), args=config,
                       train_dataset=Dataset.from_list((rows * (need // len(rows) + 1))[:need]),
                       processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]), callbacks=[Timer()])
    trainer.train()

    # The gather alone: u and v of one device's batch, forward and backward.
    u = torch.randn(args.batch, requires_grad=True)
    v = torch.randn(args.batch, requires_grad=True)
    gather_times = []
    for i in range(60):
        dist.barrier()
        t0 = time.perf_counter()
        (gather_with_grad(u).sum() + gather_with_grad(v).sum()).backward()
        if i >= 10:
            gather_times.append(time.perf_counter() - t0)

    if rank == 0:
        on, off = _summary(step_times[True]), _summary(step_times[False])
        obj_on, obj_off = _summary(objective_times[True]), _summary(objective_times[False])
        gather = _summary(gather_times)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\naot_global_sort overhead: {world} processes (gloo, CPU, {args.threads} thread(s) each), "
              f"{args.variant}, {args.batch} pairs per device ({2 * args.batch * world} sequences per step), "
              f"tiny 1M Llama, {args.steps} timed steps per mode, load average {load:.1f}")
        print(f"{'':26}{'median ms':>11}{'IQR ms':>9}{'n':>5}")
        print(f"{'step, global sort on':26}{on[0]:11.1f}{on[1]:9.1f}{len(step_times[True]):5}")
        print(f"{'step, global sort off':26}{off[0]:11.1f}{off[1]:9.1f}{len(step_times[False]):5}")
        print(f"{'  overhead per step':26}{on[0] - off[0]:11.1f}{'':9}     ({100 * (on[0] - off[0]) / off[0]:+.1f}%)")
        print(f"{'AOT objective fwd, on':26}{obj_on[0]:11.2f}{obj_on[1]:9.2f}{len(objective_times[True]):5}")
        print(f"{'AOT objective fwd, off':26}{obj_off[0]:11.2f}{obj_off[1]:9.2f}{len(objective_times[False]):5}")
        print(f"{'gather u,v fwd+bwd alone':26}{gather[0]:11.2f}{gather[1]:9.2f}{len(gather_times):5}")
    dist.barrier()  # rank 0 printed; without this it can hang in the teardown while the others have left
    dist.destroy_process_group()


if __name__ == "__main__":
    parsed = _args()
    if "LOCAL_RANK" in os.environ:
        _worker(parsed)
    else:
        sys.exit(_launch(parsed))
