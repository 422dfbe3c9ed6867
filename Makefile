# Set-up and checks. torch is pinned and installed first: an unpinned torch pulls a
# multi-GB CUDA build, and 2.13.0 is the CPU build available on the target machines.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[workstation,dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hatprof demo

# The whole suite: the fast tier and the slow one (wheel, README commands, Ray).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The edit loop: everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

clean:
	rm -rf $(VENV) build *.egg-info
