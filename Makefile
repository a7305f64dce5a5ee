# Two commands matter: `make test` and `make report`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test report report-long smoke venv clean benchmark

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

report: $(STAMP)
	$(PY) -m dynrcnn report --profile mini

# the same report with three times longer fine-tunes (baseline AP90 above 10), about 3x the time
report-long: $(STAMP)
	$(PY) -m dynrcnn report --profile mini_long --out build/report-long

smoke: $(STAMP)
	$(PY) -m dynrcnn report --profile smoke

benchmark: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf build
