# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: venv test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

# pytest exits 5 when it collected no test: that is a failure here, as is any other non-zero code.
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

demo: venv
	$(PY) -m demo

# Benchmarks (not tests): each prints a table and writes bench/results/<name>.json.
bench: venv
	$(PY) -m bench.raster
	$(PY) -m bench.input_pipeline
	$(PY) -m bench.sketchy
	$(PY) -m bench.similarity
	$(PY) -m bench.retrieval_quality
	$(PY) -m bench.batch

clean:
	rm -rf $(VENV) demo_out
