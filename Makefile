# Two commands matter: `make test` and `make report`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test report report-quick smoke venv clean benchmark

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# the report of record: 900-iteration fine-tunes on the miniature benchmark (baseline AP90 above 10)
report: $(STAMP)
	$(PY) -m dynrcnn report --profile mini

# the same runs at 300 iterations, about a third of the training time; outside the regime
report-quick: $(STAMP)
	$(PY) -m dynrcnn report --profile mini_quick --out build/report-quick

smoke: $(STAMP)
	$(PY) -m dynrcnn report --profile smoke

benchmark: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf build
