# Two commands matter: `make test` and `make report`. Both create .venv if it is missing, from
# requirements.lock (the pinned set the report of record ran with), then dynrcnn itself with
# --no-deps; `make lock` regenerates the locks and prints what changed (docs/environment.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test report report-quick report-controls report-trees report-premise smoke venv lock mmdet-env mmdet clean benchmark jupyter

# the lock (with hashes) first, then the project editable without resolving anything again; the
# lock holds setuptools (torch needs it), so the editable build uses it instead of a fresh download
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.lock
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# regenerate requirements.lock and peer_mmdet/requirements.lock with uv, print the changed versions;
# UPGRADE="numpy pillow" moves those packages, UPGRADE=all all but the torch/torchvision pair
lock:
	PYTHON=$(PYTHON) UPGRADE="$(UPGRADE)" tools/update_lock.sh

# MMDetection, run side by side with dynrcnn in its own environment (peer_mmdet/, README)
MMDET_VENV := .venv-mmdet
MMDET_STAMP := $(MMDET_VENV)/.installed
$(MMDET_STAMP): $(STAMP) peer_mmdet/requirements.lock peer_mmdet/mmcv_ext.py peer_mmdet/build_env.sh
	PYTHON=$(PYTHON) BASE=$(VENV) peer_mmdet/build_env.sh $(MMDET_VENV)
	touch $(MMDET_STAMP)

mmdet-env: $(MMDET_STAMP)

# MMDetection's Faster / Dynamic R-CNN trained next to the report of record (needs make report's runs)
mmdet: $(STAMP) $(MMDET_STAMP)
	$(PY) -m dynrcnn mmdet

# the suite includes the parity test against MMDetection's own DynamicRoIHead (in .venv-mmdet)
test: $(STAMP) $(MMDET_STAMP)
	$(PY) -m pytest -q

# the report of record: 900-iteration fine-tunes on the miniature benchmark (baseline AP90 above 10)
report: $(STAMP)
	$(PY) -m dynrcnn report --profile mini

# the same runs at 300 iterations, about a third of the training time; outside the regime
report-quick: $(STAMP)
	$(PY) -m dynrcnn report --profile mini_quick --out build/report-quick

# fixed thresholds / betas and the sensitivity grid next to the report of record (needs make report's runs)
report-controls: $(STAMP)
	$(PY) -m dynrcnn controls

# real photographs (docs/trees.md): data/trees from the deepforest wheel when missing, then Faster R-CNN and
# Dynamic R-CNN at RPN NMS 0.85 with 5 paired seeds each into runs/trees, figures/trees/, notebook 08, the doc's block
report-trees: $(STAMP)
	$(PY) -m dynrcnn study trees

# the premise (docs/premise.md): the benchmark frozen by the search (dynrcnn premise search / freeze), a fresh
# draw into data/premise, fixed 0.5 / 0.6 / 0.7, DLA, DSL, Dynamic R-CNN x 10 paired seeds into runs/premise_test
report-premise: $(STAMP)
	$(PY) -m dynrcnn study premise

smoke: $(STAMP)
	$(PY) -m dynrcnn report --profile smoke

# the paper's overhead claim, the training step of the report of record and the RPN's NMS (docs/performance.md's
# blocks; the NMS also on the report's trained baseline when make report has run)
NMS_CHECKPOINT := runs/mini/baseline/checkpoints/last.pth
# the levers docs/performance.md's PERFORMANCE block compares (the others: git show f0e119b:docs/performance.md)
STEP_VARIANTS := fp32,nms,sparse+bf16+channels_last,sparse+bf16+channels_last+nms,sparse+bf16+channels_last+nms+fused,sparse+bf16+channels_last+nms+mm
benchmark: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/step.py --variants $(STEP_VARIANTS) --skip-layout --threads 1 --data-root data/mini --page docs/performance.md
	$(PY) benchmarks/nms.py $(if $(wildcard $(NMS_CHECKPOINT)),--checkpoint $(NMS_CHECKPOINT)) --page docs/performance.md

# the notebooks in JupyterLab, in the project's venv (the notebook extra is installed once); as root
# (a container) JupyterLab refuses to start without --allow-root
JUPYTER_FLAGS := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)
jupyter: $(STAMP)
	$(PY) -m pip install -e ".[notebook]"
	$(VENV)/bin/jupyter lab $(JUPYTER_FLAGS) notebooks/

clean:
	rm -rf build
