# aot-handbook: every target sets up what it needs, then runs.
#   make test                       the offline CPU suite (make test-fast: without the tests marked slow, < 1 min)
#   make train [RECIPE=...]         train (default: the tiny offline pipeline)
#   make lint                       ruff (check and format --check) from a small environment of its own
# Use your own Python environment with PYTHON=/path/to/python (no virtualenv is made then).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
# The torch build installed when the environment has none. 2.13.0 is the version tested;
# on Linux PyPI serves its CUDA build. Set TORCH="torch==2.13.0+cu128 --index-url ..." as you need.
TORCH ?= torch==2.13.0
ifdef PYTHON
  PY := $(PYTHON)
  STAMP := .cache/deps-installed-$(subst /,_,$(PYTHON))
else
  PY := $(VENV)/bin/python
  STAMP := $(VENV)/.deps-installed
endif

RECIPE ?= recipes/tiny/aot_unpaired.yaml
ARGS ?=
ACCELERATE_CONFIG ?=
NUM_PROCESSES ?= 8
# The rendezvous port of a multi-process run (accelerate's default: 29500); set it to run two at once.
MAIN_PROCESS_PORT ?=
SWEEP ?= recipes/ablations/penalty.sweep.yaml
VALIDATE ?= recipes
PYTEST_ARGS ?=
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The environment's console scripts (setup.cfg [options.entry_points]): $(BIN)aot-train, ... beside $(PY)
# (PYTHON=python3, a bare name, is looked up on PATH first)
BIN = $(dir $(if $(findstring /,$(PY)),$(PY),$(shell command -v $(PY))))

.PHONY: help setup lint format test test-fast train validate-recipes sweep generate-recipes eval table plot bench \
	reproduce-tiny reproduce-tiny-graded gpu-check compare pairs

help:
	@echo "make test | make test-fast | make lint | make format | make train [RECIPE=recipes/...yaml] [ARGS='--key value ...']"
	@echo "  [ACCELERATE_CONFIG=recipes/accelerate_configs/fsdp.yaml NUM_PROCESSES=8]"
	@echo "  (on CPU: ACCELERATE_CONFIG=recipes/accelerate_configs/ddp_cpu.yaml NUM_PROCESSES=2)"
	@echo "make gpu-check          (bf16, SDPA/flash-attention, paged AdamW, QLoRA, vLLM on one GPU; <10 min)"
	@echo "make validate-recipes | make sweep SWEEP=recipes/ablations/<name>.sweep.yaml [ARGS=--dry-run]"
	@echo "make generate-recipes   (rewrite recipes/<model>/*.yaml and recipes/unpaired/ from recipes/_generate.py)"
	@echo "make eval [RUN=runs/...] [EVAL=recipes/eval/...yaml] | make table [TABLE=1..10|tiny] | make plot [RUN='runs/a runs/b']"
	@echo "make compare RUNS='runs/a runs/b ...' [EVAL=recipes/eval/...yaml] [METRICS='m1 m2']   (ranking with p-values)"
	@echo "make reproduce-tiny [QUICK=1] [JOBS=2]   (the paper's claims on the tiny task, offline, on-policy and graded:"
	@echo "  docs/REPRODUCTION.md; 35 min on 2 idle cores from a fresh clone, QUICK=1 ~3 min; JOBS runs at a time; resumable)"
	@echo "make reproduce-tiny-graded [QUICK=1] [JOBS=2]   (the graded regime alone, every method tuned alike: G1-G5)"
	@echo "make bench [QUICK=1]    (BENCHMARKS.md: ours vs TRL, the reference cache, the loss's scaling, generation)"
	@echo "make pairs [RECIPE=recipes/tiny/sft.pairs.yaml] [ARGS=...]   (on-policy preference data: sample, score, pair; rounds)"

$(STAMP): setup.cfg pyproject.toml
	@mkdir -p .cache
	@test -x "$(PY)" || python3 -m venv "$(VENV)"
	@"$(PY)" -c "import torch" 2>/dev/null || "$(PY)" -m pip install $(TORCH)
	"$(PY)" -m pip install -q -e ".[test]"
	@touch "$@"

setup: $(STAMP)

# ruff over the whole tree (pyproject.toml [tool.ruff]: line length 119, pyflakes, import order; make format: ruff's
# formatter), from a small environment of its own (.cache/ruff: ruff alone, no torch); run by .ci/run. RUFF_SPEC is
# the version setup.cfg's test extra pins too (tests/e2e/test_make.py checks they agree).
RUFF_SPEC := ruff>=0.17,<0.18
RUFF := .cache/ruff/bin/ruff
$(RUFF):
	@mkdir -p .cache
	python3 -m venv .cache/ruff
	.cache/ruff/bin/pip install -q "$(RUFF_SPEC)"

lint: $(RUFF)
	$(RUFF) check .

format: $(RUFF)
	$(RUFF) format .

test: validate-recipes
	$(OFFLINE) "$(PY)" -m pytest $(PYTEST_ARGS)

# The suite without the tests marked slow (pytest -m "not slow"; the slow ones train many steps, launch several
# processes or install the package): under a minute on 2 idle cores.
test-fast: $(STAMP)
	$(OFFLINE) "$(PY)" -m pytest -m "not slow" $(PYTEST_ARGS)

train: $(STAMP)
ifdef ACCELERATE_CONFIG
	"$(PY)" -m accelerate.commands.launch --config_file "$(ACCELERATE_CONFIG)" --num_processes $(NUM_PROCESSES) \
		$(if $(MAIN_PROCESS_PORT),--main_process_port $(MAIN_PROCESS_PORT)) -m aot_handbook.cli train "$(RECIPE)" $(ARGS)
else
	"$(BIN)aot-train" "$(RECIPE)" $(ARGS)
endif

# Every recipe, sweep, accelerate config and eval recipe, offline (no weights, no data); stops at the
# first bad file, naming it and the key.
validate-recipes: $(STAMP)
	$(OFFLINE) "$(BIN)aot-validate" $(VALIDATE)

# One training run per override set of a sweep; ARGS=--dry-run prints the commands, ARGS=--slurm submits jobs.
sweep: $(STAMP)
	"$(BIN)aot-sweep" "$(SWEEP)" $(ARGS)

generate-recipes: $(STAMP)
	"$(PY)" recipes/_generate.py

# ---- evaluation -------------------------------------------------------------
#   make eval  [RUN=runs/...] [EVAL=recipes/eval/....yaml]   one run x one evaluation -> results/<run>/<eval>.json
#   make table [TABLE=1..10|tiny]                              results/ -> results/tables/table<N>.{md,csv,tex}
#   make plot  [RUN="runs/a runs/b"]                           paper Fig. 1a/1b -> results/plots/fig1{a,b}.png
# One-path variables (RECIPE, EVAL, RUN for eval, SWEEP, ACCELERATE_CONFIG) are quoted: spaces and unicode pass
# whole. RUN for plot, RUNS, METRICS, VALIDATE and ARGS are lists, split on spaces.
RUN ?= runs/tiny-aot_unpaired
EVAL ?= recipes/eval/tiny.eval.yaml
TABLE ?= 1
# Tiny runs and recipes never need the hub: run them offline; real evaluations need the hub (AlpacaEval data).
EVAL_ENV = $(if $(findstring tiny,$(RUN) $(EVAL)),$(OFFLINE))

eval: $(STAMP)
	$(EVAL_ENV) "$(BIN)aot-eval" "$(RUN)" "$(EVAL)" $(ARGS)

table: $(STAMP)
	"$(BIN)aot-table" $(TABLE) $(ARGS)

# Which run is better, and how sure: the relative dominance test on per-sample scores (docs/DOMINANCE.md)
compare: $(STAMP)
	"$(BIN)aot-compare" $(RUNS) $(if $(EVAL),--eval "$(EVAL)") $(if $(METRICS),--metrics $(METRICS)) $(ARGS)

plot: $(STAMP)
	$(if $(findstring tiny,$(RUN)),$(OFFLINE)) "$(BIN)aot-plot" $(RUN) $(ARGS)

# Benchmarks (BENCHMARKS.md): QUICK=1 for the ~30 s smoke run; ARGS="--only cache,loss --json out.json"
bench: $(STAMP)
	$(OFFLINE) "$(PY)" benchmarks/bench.py $(if $(QUICK),--quick) $(ARGS)

# The paper's claims on the tiny task, offline, in three regimes: fixed pairs and on-policy data with iterative rounds
# (recipes/tiny/reproduce.grid.yaml -> results/reproduce-tiny/{tables,plots,claims*.md}), then the graded regime
# (recipes/tiny/graded/reproduce.grid.yaml -> results/reproduce-tiny-graded/; as reproduce-tiny-graded). JOBS runs
# train at a time (each in a child process on one thread; the outputs are those of JOBS=1); the second grid runs even
# when a cell of the first failed, and the target then fails. Resumable: finished runs and evaluations are skipped.
# QUICK=1: one seed, 3 steps a run, 64 sampled prompts (smoke test, both grids). ARGS="--only tiny-kto": some runs.
JOBS ?= 2
reproduce-tiny: $(STAMP)
	@status=0; \
	$(OFFLINE) "$(BIN)aot-reproduce" recipes/tiny/reproduce.grid.yaml $(if $(QUICK),--quick) --jobs $(JOBS) $(ARGS) \
		|| status=1; \
	$(OFFLINE) "$(BIN)aot-reproduce" recipes/tiny/graded/reproduce.grid.yaml $(if $(QUICK),--quick) --jobs $(JOBS) \
		$(ARGS) || status=1; \
	exit $$status

# The graded regime alone (issue 28: the chosen answer is better, never right), every method tuned alike on
# validation prompts, then 3 seeds on held-out ones (recipes/tiny/graded/reproduce.grid.yaml ->
# results/reproduce-tiny-graded/ claims-graded.md, tuning.json). QUICK=1: the same grid at 3 steps a run, one seed.
reproduce-tiny-graded: $(STAMP)
	$(OFFLINE) "$(BIN)aot-reproduce" recipes/tiny/graded/reproduce.grid.yaml $(if $(QUICK),--quick) --jobs $(JOBS) \
		$(ARGS)

# What only a GPU exercises (bf16 AOT steps of small Llama/Mistral with LoRA + gradient checkpointing, one row
# per pair under SDPA, the flash-attention fallback, paged AdamW, 4-bit QLoRA, vLLM, peak memory): one table,
# under 10 minutes on one GPU. Without a GPU it prints "no GPU: skipped" and exits 0.
gpu-check: $(STAMP)
	$(OFFLINE) "$(BIN)aot-gpu-check" $(ARGS)


# On-policy preference data (aot_handbook.pairs, a *.pairs.yaml recipe): sample k answers per prompt, score them,
# write paired and unpaired data; resumable; its requires first, and rounds (aot_handbook.plan). RECIPE defaults to the tiny one here (RECIPE's global default is a training recipe).
PAIRS_RECIPE = $(if $(filter command line environment,$(origin RECIPE)),$(RECIPE),recipes/tiny/sft.pairs.yaml)
pairs: $(STAMP)
	$(if $(findstring tiny,$(PAIRS_RECIPE)),$(OFFLINE)) "$(BIN)aot-pairs" "$(PAIRS_RECIPE)" $(ARGS)
