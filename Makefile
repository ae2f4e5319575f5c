# One command sets up and runs the demo; one runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
DATA   ?= indexes/demo
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test lint install eval clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0          # the CPU wheel; first, so nothing pulls a CUDA build
	$(PY) -m pip install --quiet -e '.[test,ray,openvino]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/recommender ingest recommender/data/sample_articles.jsonl --data-dir $(DATA)
	$(VENV)/bin/recommender reindex --data-dir $(DATA)
	@echo; echo '$$ recommender related hl-0020 --k 5'
	$(VENV)/bin/recommender related hl-0020 --k 5 --data-dir $(DATA)
	@echo; echo '$$ recommender search "Irena Kalvos" --k 5'
	$(VENV)/bin/recommender search "Irena Kalvos" --k 5 --data-dir $(DATA)
	@echo; echo '$$ recommender search "who pays for the new crossing over the harbour" --k 5'
	$(VENV)/bin/recommender search "who pays for the new crossing over the harbour" --k 5 --data-dir $(DATA)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check recommender tests scripts
	$(VENV)/bin/mypy                               # the package (pyproject.toml)
	$(VENV)/bin/mypy --explicit-package-bases tests  # tests import tests.helpers
	$(VENV)/bin/mypy scripts                       # scripts import devsets beside them

eval: install
	$(PY) scripts/eval_all.py --data ../shared/data

clean:
	rm -rf $(DATA) indexes/eval
