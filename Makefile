# Quick start: `make demo` runs the evaluator on the embedded demo, `make test` runs lint and tests.
# Both create the virtual environment from the requirements files on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test lint clean mutation

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

# Mutation testing (slow, not part of `make test`): mutmut's mutants of the official metric, frame sampling,
# rotary positions and the shared-prefix path selection, against the fast tests named in pyproject.toml.
# Fails when a mutant survives that mutation_survivors.txt does not explain.
MUTATED := "vsibench_acc.*" "qwen_vl_utils.*" "generation.x_shared_prefix_text*" "worker.x_video_answerer*"

mutation: $(VENV)/installed
	$(VENV)/bin/pip install --quiet mutmut==3.8.1
	rm -rf mutants
	EVAL_QWEN_TEST_DEMO_DIR=$(CURDIR)/.mutation_demo $(VENV)/bin/mutmut run $(MUTATED) > mutation.log 2>&1
	$(VENV)/bin/mutmut results --all true > mutants/results.txt
	@grep -c ': killed' mutants/results.txt | xargs echo "killed:"
	@grep -c ': timeout' mutants/results.txt | xargs echo "timed out (the mutant hangs, so a test notices):"
	@sed -n 's/^ *\(.*\): survived$$/\1/p' mutants/results.txt | sort > mutants/survived.txt
	@grep -v '^#' mutation_survivors.txt | cut -d' ' -f1 | sort > mutants/explained.txt
	@wc -l < mutants/survived.txt | xargs echo "survived (each explained in mutation_survivors.txt):"
	@comm -23 mutants/survived.txt mutants/explained.txt > mutants/unexplained.txt
	@if [ -s mutants/unexplained.txt ]; then echo "unexplained survivors:"; cat mutants/unexplained.txt; exit 1; fi

clean:
	rm -rf demo_data demo_runs mutants .mutation_demo mutation.log
