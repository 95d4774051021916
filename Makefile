# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

# The web app's browser tests drive Debian's chromium (no browser download on these machines).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# `make serve`: the page over the model and gallery index that `make demo` leaves.
SERVE_MODEL ?= demo_out/model/export
SERVE_INDEX ?= demo_out/model/index
SERVE_PORT ?= 8000

.PHONY: venv browser test test-fast demo serve bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

# pytest exits 5 when it collected no test: that is a failure here, as is any other non-zero code.
browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

test: venv browser
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv browser
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

demo: venv
	$(PY) -m demo

serve: venv
	@test -d $(SERVE_MODEL) || { echo "make serve: no exported model at $(SERVE_MODEL); run make demo first, or SERVE_MODEL=DIR SERVE_INDEX=DIR make serve"; exit 2; }
	$(PY) -m webapp --model $(SERVE_MODEL) $(if $(wildcard $(SERVE_INDEX)),--index $(SERVE_INDEX)) --port $(SERVE_PORT)

# Benchmarks (not tests): each prints a table and writes bench/results/<name>.json.
bench: venv
	$(PY) -m bench.raster
	$(PY) -m bench.raster_tf
	$(PY) -m bench.input_pipeline
	$(PY) -m bench.sketchy
	$(PY) -m bench.similarity
	$(PY) -m bench.retrieval_quality
	$(PY) -m bench.batch
	$(PY) -m bench.webapp

clean:
	rm -rf $(VENV) demo_out
