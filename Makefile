# The two README commands. Both create .venv at the repo root when it is missing.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# lmms-eval for the suite's lmms-eval test, on its PYTHONPATH beside the venv (tests/lmms_eval_requirements.txt)
LMMS_EVAL := $(VENV)/lmms-eval

.PHONY: demo test clean-demo

$(STAMP): pyproject.toml tests/lmms_eval_requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -rf $(LMMS_EVAL) && $(PY) -m pip install -q --no-deps --target $(LMMS_EVAL) -r tests/lmms_eval_requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pave demo --workdir demo_out

# Two pytest processes: much of the suite waits on Ray, subprocesses and the loopback S3 server, not on a core.
TEST_PROCESSES ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_PROCESSES) tests
