# Both entry points build their own virtualenv and find (or fetch) a Consul binary,
# so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test demo bench venv consul clean

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

demo: $(VENV)/.installed
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(PY) scripts/demo.py

bench: $(VENV)/.installed
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(PY) bench/run.py
	CONSUL_BIN="$$(scripts/fetch-consul.sh)" $(PY) bench/status.py

clean:
	rm -rf $(VENV) tools build *.egg-info
