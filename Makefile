# hf_distill — all set-up happens through these targets; `make demo` and `make test` run it when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= data/manydomain
DATA_STAMP := $(DATA_DIR)/benchmark.json
EXTRAS := faiss,deepspeed,tensorboard,onnx,offline-assets,dev
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install data test demo lint format bench mutants clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_assets.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	bash scripts/install_assets.sh $(PY)
	touch $(STAMP)

data: $(DATA_STAMP)

# The default benchmark (manydomain, docs/benchmark.md); `make data BENCHMARK=offline_five DATA_DIR=data/offline_five`
# builds the small five-domain one.
BENCHMARK ?= manydomain
$(DATA_STAMP): $(STAMP)
	$(PY) -m hf_distill.data.benchmark --benchmark $(BENCHMARK) --output $(DATA_DIR)

# pytest's exit code 5 (no test collected) is turned into a failure. Two pytest-xdist workers, one per core
# (`make test PYTEST_JOBS=0` runs in one process); `--dist worksteal` rebalances when one worker's tests run long.
PYTEST_JOBS ?= 2
test: $(STAMP) $(DATA_STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider -n $(PYTEST_JOBS) --dist worksteal $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

demo: $(STAMP) $(DATA_STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --mixed_precision no --dynamo_backend no \
		recipes/udon.py --config recipes/configs/udon_offline.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check hf_distill recipes tests benchmarks model_cards examples
	$(VENV)/bin/ruff format --check hf_distill recipes tests benchmarks model_cards examples

format: $(STAMP)
	$(VENV)/bin/ruff check --fix hf_distill recipes tests benchmarks model_cards examples
	$(VENV)/bin/ruff format hf_distill recipes tests benchmarks model_cards examples

# One table: every benchmarks/bench_*.py figure next to its limit measured in the same run (docs/performance.md).
bench: $(STAMP) $(DATA_STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# Mutation testing (docs/testing.md; not part of CI): mutmut mutates the modules listed under [tool.mutmut] in
# pyproject.toml and runs, for each mutant, only the tests that reach the mutated function. MUTANTS narrows the run
# to some modules, e.g. `make mutants MUTANTS='hf_distill.layers.normalization*'`; MUTANT_JOBS processes at a time.
MUTANTS ?=
MUTANT_JOBS ?= 2
mutants: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTANT_JOBS) $(MUTANTS)
	$(PY) scripts/mutant_rates.py

clean:
	rm -rf $(VENV) data outputs .assets mutants
