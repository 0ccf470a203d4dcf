#!/usr/bin/env bash
# `make train` idle and beside one competing CPU-bound process, with torch's intra-op threads as the
# handbook now chooses them (one thread for the ~1M-parameter tiny model, OMP_NUM_THREADS unset) and as
# before (torch's default, one thread per core: OMP_NUM_THREADS=$(nproc)). README "Threads on CPU".
#
#   benchmarks/threads.sh                                   # the tiny SFT stage, 600 steps (~2.5 min idle)
#   RECIPE=recipes/tiny/sft.yaml ARGS="--max_steps 100" benchmarks/threads.sh      # a shorter try
#   COMPETITOR=train benchmarks/threads.sh                 # the competitor: another make train, not a spin loop
#   PYTHON=/path/to/python benchmarks/threads.sh           # an environment with the package (default: .venv)
#   SETTINGS=chosen benchmarks/threads.sh                  # only the handbook's thread choice
#
# Run it on an otherwise quiet machine: the competitor is the only load it means to measure. Each timed
# run starts from a scratch folder with the tiny assets built (untimed) and no runs/. Prints one line per
# run and a table with loaded / idle per setting.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
RECIPE=${RECIPE:-recipes/tiny/sft.yaml}
ARGS=${ARGS:-}
COMPETITOR=${COMPETITOR:-spin}
SETTINGS=${SETTINGS:-chosen before}   # "chosen" alone skips the slow before-runs
CORES=$(nproc)
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever the environment has installed
WORK=$(mktemp -d /tmp/aot-threads.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

scratch() {  # a folder that looks like the repository to make, with this environment marked as set up
  local dir=$1
  mkdir -p "$dir/.cache"
  cp -r "$REPO/recipes" "$dir/recipes"
  for f in Makefile scripts setup.cfg pyproject.toml src; do ln -s "$REPO/$f" "$dir/$f"; done
  touch "$dir/.cache/deps-installed-${PYTHON//\//_}"
  (cd "$dir" && HF_HUB_OFFLINE=1 "$PYTHON" -c "from aot_handbook.tasks.tiny.arithmetic import ensure_tiny_assets; ensure_tiny_assets()")
}

competitor() {  # one CPU-bound process (its own process group) until killed; prints the group id
  if [ "$COMPETITOR" = train ]; then
    setsid bash -c "cd '$WORK/other' && while true; do rm -rf runs; OMP_NUM_THREADS=1 make -s train \
      RECIPE='$RECIPE' PYTHON='$PYTHON' >/dev/null 2>&1 || true; done" >/dev/null 2>&1 &
  else
    setsid "$PYTHON" -c "while True: pass" >/dev/null 2>&1 &
  fi
  echo $!
}

timed_train() {  # seconds of one make train in the scratch folder; $1: chosen | before
  local start end threads
  threads=$([ "$1" = chosen ] && echo "-u OMP_NUM_THREADS" || echo "OMP_NUM_THREADS=$CORES")
  rm -rf "$WORK/main/runs"
  start=$(date +%s.%N)
  (cd "$WORK/main" && env $threads make -s train RECIPE="$RECIPE" ARGS="$ARGS" PYTHON="$PYTHON" \
    >"$WORK/last.log" 2>&1) || { tail -20 "$WORK/last.log" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

scratch "$WORK/main"
[ "$COMPETITOR" = train ] && scratch "$WORK/other"
echo "machine: $CORES cores, $(uptime | sed 's/.*load average/load average/')"
echo "recipe: $RECIPE $ARGS; competitor: $COMPETITOR"
declare -A T
for setting in $SETTINGS; do
  for load in idle loaded; do
    pid=""
    [ "$load" = loaded ] && pid=$(competitor) && sleep 1
    T[$setting,$load]=$(timed_train "$setting")
    [ -n "$pid" ] && { kill -- "-$pid" 2>/dev/null || true; }
    printf '%-7s %-7s %8.1f s\n' "$setting" "$load" "${T[$setting,$load]}"
  done
done
echo
echo "| threads | idle (s) | beside one CPU-bound process (s) | loaded / idle |"
echo "|---|---|---|---|"
for setting in $SETTINGS; do
  label=$([ "$setting" = chosen ] && echo "handbook's choice (1 for the tiny model)" || echo "torch default ($CORES)")
  printf '| %s | %.1f | %.1f | %.2fx |\n' "$label" "${T[$setting,idle]}" "${T[$setting,loaded]}" \
    "$(echo "${T[$setting,loaded]} / ${T[$setting,idle]}" | bc -l)"
done
