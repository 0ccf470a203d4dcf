#!/bin/bash
# Multi-node training on SLURM: one `accelerate launch` per node, each starting GPUS_PER_NODE processes.
#
#   sbatch slurm_launch.sh RECIPE [--key value ...]                  # 1 node x 8 GPUs (the paper)
#   sbatch --nodes 2 slurm_launch.sh RECIPE [--key value ...]        # 2 nodes x 8 GPUs
#   ACCELERATE_CONFIG=recipes/accelerate_configs/zero3.yaml sbatch slurm_launch.sh RECIPE
#   DRY_RUN=1 bash slurm_launch.sh RECIPE ...                        # print the command only
#
# This file is installed with the package (aot-sweep --slurm submits it); its path:
#   python -c "import aot_handbook.tooling.sweep as s; print(s.SLURM_LAUNCHER)"
#
# Environment: ACCELERATE_CONFIG (default recipes/accelerate_configs/fsdp.yaml), GPUS_PER_NODE (8),
# MAIN_PORT (29500), PYTHON (python). Submit from the folder the recipe paths are relative to. AOT note: with more GPUs the
# global batch grows; the per-GPU batch (what the paper's per-GPU sort sees) stays the recipe's.
#SBATCH --job-name=aot
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=%x-%j.out
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch [--nodes N] slurm_launch.sh RECIPE [--key value ...]" >&2
    exit 2
fi
RECIPE=$1
shift
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-recipes/accelerate_configs/fsdp.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_PORT=${MAIN_PORT:-29500}
PYTHON=${PYTHON:-python}
NUM_NODES=${SLURM_NNODES:-1}
WORLD_SIZE=$((NUM_NODES * GPUS_PER_NODE))
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else
    MAIN_HOST=127.0.0.1
fi
for f in "$RECIPE" "$ACCELERATE_CONFIG"; do
    [ -f "$f" ] || { echo "error: file not found: $f" >&2; exit 2; }
done

# The recipe's overrides, quoted once so they survive the `bash -c` each node runs.
ARGS=$(printf '%q ' "$RECIPE" "$@")
# \$SLURM_PROCID is expanded on each node: it is that node's machine rank.
LAUNCH="$PYTHON -m accelerate.commands.launch --config_file $ACCELERATE_CONFIG \
 --num_machines $NUM_NODES --num_processes $WORLD_SIZE --machine_rank \${SLURM_PROCID:-0} \
 --main_process_ip $MAIN_HOST --main_process_port $MAIN_PORT --rdzv_backend static \
 -m aot_handbook.cli train $ARGS"

if [ -n "${DRY_RUN:-}" ]; then
    echo "srun --ntasks-per-node=1 --nodes=$NUM_NODES bash -c \"$LAUNCH\""
    exit 0
fi
srun --ntasks-per-node=1 --nodes="$NUM_NODES" bash -c "$LAUNCH"
