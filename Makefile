# wmhseg — set-up, tests and the end-to-end demo.
PYTHON      ?= python3.11
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
# the OpenVINO CPU backend is an optional extra; installed here because it is cheap (about 10 s,
# 180 MB) and lets the tests compare it with PyTorch (EXTRAS=dev leaves it out)
EXTRAS      ?= dev,openvino
BIN         := $(VENV)/bin
PY          := $(BIN)/python
STAMP       := $(VENV)/.installed

# The demo: train on synthetic scans, simulate a longitudinal ALS/control study of scans,
# segment them, and run the study's statistics on the measured volumes.
DEMO_DIR    ?= demo_out
DEMO_ALS    ?= 28
DEMO_CTRL   ?= 16
# 3-4 visits and survival data for 90% of patients: benchmarks/demo_design.py shows the headlines
# and the Cox model need them at this size
DEMO_VISITS ?= 0 0 0.5 0.5
DEMO_SURVIVAL ?= 0.9
DEMO_SEED   ?= 1
# the checkpoint with the best validation Dice (training writes last.ckpt beside it)
CKPT        := $(DEMO_DIR)/train/checkpoints/best.ckpt
STUDY       := $(DEMO_DIR)/study
INFER_OUT   := $(DEMO_DIR)/infer
REPORT      := $(DEMO_DIR)/report
INDEPENDENT := $(DEMO_DIR)/independent
# the study segmented visit by visit (prior weight 0), the comparison for the longitudinal mode
SEPARATE    := $(DEMO_DIR)/infer_visit_by_visit
# the visits' registrations, found by step 3 and reused by step 6
REGISTRATIONS := longitudinal_options.registration_cache=$(DEMO_DIR)/registrations

.PHONY: help install test test-fast lint demo demo-clean bench bench-quick clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/; s|[$$][(]TORCH_SPEC[)]|$(TORCH_SPEC)|' | expand -t 14

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install wmhseg with its dependencies ($(TORCH_SPEC) first)

# Idle OpenMP threads sleep rather than spin: spinning collapses small 3-D convolutions when the
# test processes (DDP ranks, loader workers) share the cores.
test: $(STAMP)  ## run the test suite (CPU, tiny synthetic volumes)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q tests

test-fast: $(STAMP)  ## the suite without the end-to-end runs marked slow (about 100 s on 2 cores)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check src tests benchmarks train.py infer.py analyze.py

demo: $(REPORT)/headline.json $(INDEPENDENT)/metrics.csv $(SEPARATE)/volumes.csv  ## train -> simulate a study -> infer -> analyze, on CPU (finished steps are reused)
	@echo
	@echo "The study's volumes and new lesions against its truth, visit by visit and in longitudinal mode:"
	@$(PY) -m wmhseg.synth score $(STUDY) visit_by_visit=$(SEPARATE) longitudinal=$(INFER_OUT)
	@echo
	@$(PY) -c "import json, pandas as pd; m = pd.read_csv('$(INDEPENDENT)/metrics.csv'); \
	a = json.load(open('$(INDEPENDENT)/agreement.json')); \
	print(f'Independent phantoms ({len(m)}): Dice {m.dice.mean():.3f} (per scan ' + ', '.join(f'{d:.2f}' for d in m.dice) \
	      + f'), volume ICC {a[\"icc_a1\"]:.2f} against their labels')"
	@echo
	@echo "Report: $(abspath $(REPORT))/report.html (and report.md)"
	@echo "QC gallery: $(abspath $(INFER_OUT))/qc/index.html"
	@echo "Headline estimates next to the values the study was simulated with:"
	@$(PY) -m wmhseg.stats.compare $(REPORT)/headline.json $(STUDY)/truth.json

TRAIN_CMD   := $(PY) train.py experiment=synthetic hydra.run.dir=$(DEMO_DIR)/train
STUDY_CMD   := $(PY) -m wmhseg.synth study $(STUDY) --n-als $(DEMO_ALS) --n-control $(DEMO_CTRL) --seed $(DEMO_SEED) \
	--visit-probabilities $(DEMO_VISITS) --p-survival-data $(DEMO_SURVIVAL) --anatomy procedural --shape 80 96 80 --spacing 2

# Steps 1 and 2 run together: the study is painted at the lowest CPU priority while the network
# trains, on what training leaves idle (about a fifth of two cores: its loader worker waits on the
# network), so neither waits for the other. Each is skipped when its output exists.
$(CKPT) $(STUDY)/manifest.csv &: | $(STAMP)
	@painter=; \
	if [ ! -f $(STUDY)/manifest.csv ]; then \
		echo "== 2/6 simulating a longitudinal study: $(DEMO_ALS) ALS, $(DEMO_CTRL) controls ($(STUDY)), beside step 1"; \
		echo 'nice -n 19 $(STUDY_CMD) > $(DEMO_DIR)/study.log'; \
		mkdir -p $(DEMO_DIR); nice -n 19 $(STUDY_CMD) > $(DEMO_DIR)/study.log 2>&1 & painter=$$!; \
	fi; \
	if [ ! -f $(CKPT) ]; then \
		echo "== 1/6 training on synthetic brain-like scans ($(DEMO_DIR)/train)"; echo '$(TRAIN_CMD)'; \
		$(TRAIN_CMD) || { [ -z "$$painter" ] || kill $$painter; exit 1; }; \
	fi; \
	[ -z "$$painter" ] || wait $$painter || { cat $(DEMO_DIR)/study.log; echo "painting the study failed"; exit 1; }

$(INFER_OUT)/volumes.csv: $(CKPT) $(STUDY)/manifest.csv
	@echo "== 3/6 segmenting every scan, each subject's visits together ($(INFER_OUT))"
	$(PY) infer.py ckpt_path=$(CKPT) input=$(STUDY)/manifest.csv out_dir=$(INFER_OUT) \
		longitudinal=true visit_times=$(STUDY)/clinical.csv $(REGISTRATIONS)

$(SEPARATE)/volumes.csv: $(CKPT) $(STUDY)/manifest.csv
	@echo "== 6/6 segmenting every visit on its own, for comparison ($(SEPARATE))"
	$(PY) infer.py ckpt_path=$(CKPT) input=$(STUDY)/manifest.csv out_dir=$(SEPARATE) qc=false \
		longitudinal=true longitudinal_options.prior_weight=0 visit_times=$(STUDY)/clinical.csv $(REGISTRATIONS)

# the phantoms of the independent family the training validated on (other anatomy, contrasts, grids),
# segmented as the study is
$(INDEPENDENT)/metrics.csv: $(CKPT)
	@echo "== 5/6 segmenting the independent validation phantoms ($(INDEPENDENT))"
	$(PY) infer.py ckpt_path=$(CKPT) input=$(DEMO_DIR)/train/data/independent/manifest.csv out_dir=$(INDEPENDENT)

$(REPORT)/headline.json: $(INFER_OUT)/volumes.csv
	@echo "== 4/6 longitudinal statistics ($(REPORT))"
	$(PY) analyze.py volumes=$(INFER_OUT)/volumes.csv clinical=$(STUDY)/clinical.csv out_dir=$(REPORT)

demo-clean:  ## remove the demo's outputs (the next `make demo` starts over)
	rm -rf $(DEMO_DIR)

# the accuracy section judges the demo's trained network when `make demo` has made one
BENCH_CKPT  = $(if $(wildcard $(CKPT)),--ckpt $(CKPT))

bench: $(STAMP)  ## performance benchmarks, side by side with their baselines (not part of the tests)
	$(PY) benchmarks/run.py $(BENCH_CKPT)

bench-quick: $(STAMP)  ## the benchmarks in a shorter mode
	$(PY) benchmarks/run.py --quick $(BENCH_CKPT)

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
