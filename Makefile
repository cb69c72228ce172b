# Two commands do all the set-up on a fresh machine:
#   make demo   run the main job end to end on the embedded default corpus (CPU, minutes)
#   make test   run the test suite
# Both create (or reuse) the venv from requirements.txt and install the Debian data where root allows.

# The first Python >= 3.11 on PATH (PYTHON=/path/to/python to choose another).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3 python; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed
DEBIAN_DATA := openclipart-svg tuxpaint-stamps-default dataset-fashion-mnist
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test venv data lint clean-demo help study-cpu bench-fashion-mnist

help:
	@echo "make demo   # mine labels, pretrain ViT + ResNet at two scales, evaluate, print the table"
	@echo "make test   # the test suite (what CI runs)"

# The stamp is newer than requirements.txt once its packages are in: a second run installs nothing.
$(STAMP): requirements.txt
	@test -n "$(PYTHON)" || { echo "no Python >= 3.11 found on PATH: set PYTHON=/path/to/python"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(PYTHON) is older than 3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

# Debian's real corpora. Installed when running as root; otherwise say what to run.
data:
	@missing=""; for p in $(DEBIAN_DATA); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then \
	  echo "installing Debian data packages:$$missing"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	else \
	  echo "NOTE: Debian data packages missing:$$missing"; \
	  echo "      install them as root: sudo apt-get update && sudo apt-get install -y$$missing"; \
	  echo "      (tests that need them are skipped; the demo needs them)"; \
	fi

test: venv data
	@$(PY) -m pytest -q --durations=10; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

demo: venv data
	$(PY) mine_labels.py --config configs/labels/openclipart.yaml
	$(PY) run_sweep.py sweeps/demo_cpu.yaml
	$(PY) evaluate.py experiment=demo_cpu model=vit_demo run_name=demo_cpu-vit_demo-random-init
	$(PY) evaluate.py experiment=demo_cpu model=resnet_demo run_name=demo_cpu-resnet_demo-random-init
	$(PY) make_report.py --runs runs --group demo_cpu --out results/demo_cpu

# The CPU study (configs/experiment/study_cpu*.yaml): 12 pretraining runs + 3 raw-label runs + 6 random-init
# evaluations + 6 stage-two runs, 3 seeds a cell; tables (mean ± std over seeds) and plots under results/.
# Two single-threaded runs at a time use 2 cores better than one run on 2 threads (hardware: command line only).
STUDY_RUNS := --parallel 2 -- trainer.cpu_threads=1 data.num_workers=1
study-cpu: venv data
	test -f data/openclipart/manifest.json || $(PY) mine_labels.py --config configs/labels/openclipart.yaml
	$(PY) run_sweep.py sweeps/study_cpu.yaml $(STUDY_RUNS)
	$(PY) run_sweep.py sweeps/study_cpu_labels.yaml $(STUDY_RUNS)
	$(PY) run_sweep.py sweeps/study_cpu_random.yaml $(STUDY_RUNS)
	$(PY) run_sweep.py sweeps/study_cpu_multitask.yaml $(STUDY_RUNS)
	$(PY) make_report.py --runs runs --group study_cpu --out results/study_cpu
	$(PY) make_report.py --runs runs --group study_cpu_multitask --out results/study_cpu_multitask
	$(PY) benchmarks/study_summary.py results/study_cpu/records.csv > results/study_cpu/summary.md

# The published-number check: Fashion-MNIST test accuracy of the classifier path (target >= 0.93 in <= 30 min).
bench-fashion-mnist: venv data
	$(PY) benchmarks/bench_fashion_mnist.py

lint: venv
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean-demo:
	rm -rf data/openclipart runs/demo_cpu-* results/demo_cpu
