# Set-up and the two everyday commands: `make test` and `make demo`.
# TORCH_SPEC picks the torch build installed first (e.g. TORCH_SPEC=torch==2.13.0 for a CPU wheel).
PYTHON ?= python3
TORCH_SPEC ?= torch
# EXTRAS picks the package extras installed with it: EXTRAS=dev,onnx adds ONNX export and its tests (.ci/run does);
# it applies when the venv is made (a venv made before keeps its extras: `make clean` first).
EXTRAS ?= dev
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

VATT := $(VENV)/bin/vatt
TOY := data/toy
# indexes are kept inside the repository for the demo (default elsewhere: ~/.vatt)
export VATT_HOME ?= $(CURDIR)/runs/vatt-home

.PHONY: venv test test-slow demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# pytest exits 5 when it collected no test: that must fail, not pass quietly.
test: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no slow tests were collected" >&2; exit 1; fi; exit $$rc

# The whole pipeline on the toy dataset, the same steps README.md shows for real data (a few minutes on 2 cores).
demo: $(STAMP)
	rm -rf $(TOY) runs/toy-pretrain runs/toy-export
	$(VATT) preprocess toy --out $(TOY) --workers 2
	$(VATT) pretrain --recipe pretrain/vatt-tiny
	$(VATT) evaluate youcook2 --ckpt runs/toy-pretrain --data $(TOY)/shards/youcook2 --index toy
	$(VATT) retrieve "a red circle moving left" --index toy --top-k 5
	$(VATT) export runs/toy-pretrain --format safetensors --tower all --out runs/toy-export
	@echo ""
	@echo "demo done:"
	@echo "  toy dataset (raw media, shards, tokenizer)  $(TOY)/"
	@echo "  pre-training run (checkpoints, metrics)      runs/toy-pretrain/"
	@echo "  zero-shot retrieval figures                  runs/toy-pretrain/eval-youcook2.json"
	@echo "  retrieval index 'toy'                        $(VATT_HOME)/indexes/toy/"
	@echo "  exported towers                              runs/toy-export/"
	@echo ""
	@echo "next, in any shell (vatt is in .venv/bin):"
	@echo "  source $(CURDIR)/.venv/bin/activate"
	@echo "  vatt retrieve \"a green square moving up\" --index $(VATT_HOME)/indexes/toy --top-k 5"

bench: $(STAMP)
	$(PY) bench/bench_backbone.py --layers 4 --rounds 3

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
