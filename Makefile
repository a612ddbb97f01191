# Set-up and the two everyday commands: `make test` and `make demo`.
# TORCH_SPEC picks the torch build installed first (e.g. TORCH_SPEC=torch==2.13.0 for a CPU wheel).
PYTHON ?= python3
TORCH_SPEC ?= torch
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# pytest exits 5 when it collected no test: that must fail, not pass quietly.
test: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
