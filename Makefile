# Quick start: `make demo` runs the evaluator on the embedded demo, `make test` runs lint and tests.
# Both create the virtual environment from the requirements files on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test lint clean

$(VENV)/installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

demo: $(VENV)/installed
	$(PYTHON) eval_qwen.py --demo

lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PYTHON) -m pytest -q

clean:
	rm -rf demo_data demo_runs
