# Quick start: `make demo` runs the evaluator on the embedded demo, `make test` runs lint and every test.
# Both create the virtual environment from the lock (requirements.txt, exact versions) on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
LATEST := .venv-latest
# pip on this kind of machine is capped at the torch releases on its disk; the lock follows the same cap.
PIP_CAP := $(wildcard /etc/xdg/pip/constraints.txt)

.PHONY: demo test test-fast lint lock test-latest clean mutation

$(VENV)/installed: requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/installed
	$(PYTHON) eval_qwen.py --demo

lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two pytest workers (pytest-xdist): the suite takes about 8.5 minutes on 2 cores instead of 10.
test: lint
	$(PYTHON) -m pytest -q -n 2

# The quick unit tests: no whole evaluator runs (e2e) and no multi-family model runs (slow); about two minutes.
test-fast: lint
	$(PYTHON) -m pytest -q -m "not e2e and not slow"

# Regenerate the lock from pyproject.toml's ranges (with the dev and serve extras): the newest releases they allow
# (and this machine's pip cap).
lock: $(VENV)/installed
	$(PYTHON) -m pip install --quiet uv==0.13.9
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra serve --python-version 3.11 --upgrade \
		$(if $(PIP_CAP),--constraint $(PIP_CAP)) --custom-compile-command "make lock" -o requirements.txt

# The tests on the newest releases the ranges allow, in an environment of their own: run it before bumping the lock.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade ".[dev,serve]"
	$(LATEST)/bin/pip list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|accelerate) '
	$(LATEST)/bin/python -m pytest -q -n 2 -p no:cacheprovider

# Mutation testing (slow, not part of `make test`): mutmut's mutants of the official metric, frame sampling,
# rotary positions and the shared-prefix path selection, against the fast tests named in pyproject.toml.
# Fails when a mutant survives that mutation_survivors.txt does not explain.
MUTATED := "vsibench_eval.metric.*" "vsibench_eval.inputs.frames.*" "vsibench_eval.model.positions.*" \
	"vsibench_eval.model.generation.x_shared_prefix_text*" "vsibench_eval.running.answering.x_video_answerer*"

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
	rm -rf demo_data demo_runs mutants .mutation_demo mutation.log $(LATEST)
