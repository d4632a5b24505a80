# encnet developer commands. `make demo` and `make test` set up everything they need from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-run

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The reference implementation's wheel (read by tests/engine/test_reference_protocol.py, never installed)
REFERENCE_WHEEL := .cache/reference/torch_encoding-1.2.1-py2.py3-none-any.whl

$(REFERENCE_WHEEL): $(STAMP)
	$(PY) -m pip download --quiet --no-deps --dest .cache/reference torch-encoding==1.2.1

install: $(STAMP)

test: $(STAMP) $(REFERENCE_WHEEL)
	ENCNET_TORCH_ENCODING=$(REFERENCE_WHEEL) $(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check encnet_core encnet_cli tests benchmarks

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR)
