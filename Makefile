# kp3d_ros: `make demo` runs the main job, `make test` the test suite; both set up .venv first.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.kp3d-setup-done
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

$(STAMP): requirements.txt setup.py scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m kp3d_ros.cli demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check kp3d_ros test launch scripts benchmarks setup.py

bench: setup
	$(PY) -m kp3d_ros.cli bench --out benchmarks/results/bench.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
