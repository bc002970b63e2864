# The two commands of the README. Both create the environment first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
WORKDIR ?= runs/quickstart
# Test processes (pytest-xdist): CI has 2 cores; 2 workers run the suite in ~10-11 min.
TEST_WORKERS ?= 2

.PHONY: quickstart test lint setup clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,hf]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# Pretrain a tiny BERT: on the Wikipedia excerpt when TLM_DATA_DIR is set, else on the
# corpus the package generates itself (works offline on a fresh clone).
quickstart: $(STAMP)
	@if [ -n "$$TLM_DATA_DIR" ]; then cfg=quickstart-wiki; else cfg=quickstart; fi; \
	echo "tlm pretrain --config $$cfg --workdir $(WORKDIR)"; \
	$(BIN)/tlm pretrain --config $$cfg --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 -n $(TEST_WORKERS) tests

# Style and the import layers of ARCHITECTURE.md (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
