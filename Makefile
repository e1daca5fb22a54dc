# Both entry points build their own virtualenv and find (or fetch) a Consul binary,
# so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test test-docker chaos demo bench venv consul clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("consul-elect needs Python >= 3.10") if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

consul:
	@scripts/fetch-consul.sh

test: $(VENV)/.installed
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(PY) -m pytest -q tests

# docker-compose.yml run in a real Docker engine (installed and started here if need be; as
# root). Prints "skipped: ..." and succeeds where no engine can run.
test-docker: $(VENV)/.installed
	$(PY) tests/docker/run.py

# Randomized fault rounds against a real 3-server cluster, judged by a history checker
# (tests/chaos). SEED=S replays a run; CONSUL_ELECT_SRC=DIR tests another copy of the package.
# ROUNDS is shared with `make demo` (N failovers there), so no default is set here.
chaos: $(VENV)/.installed
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" PYTHONPATH=tests $(PY) -m chaos --rounds $(or $(ROUNDS),200) $(if $(SEED),--seed $(SEED))

demo: $(VENV)/.installed
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(if $(ROUNDS),ROUNDS=$(ROUNDS)) $(PY) scripts/demo.py

# Benchmarks against `consul lock` on the same agent (bench/README.md); matplotlib (the `bench`
# extra) draws bench/results/latest.png from bench/run.py's figures.
bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(PY) bench/run.py
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(PY) bench/status.py
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(PY) bench/scale.py
	$(PY) bench/plot.py

clean:
	rm -rf $(VENV) tools build *.egg-info
