# `make train` and `make test` do all the set-up: they create .venv and install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install train test lint format bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,all]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) sheeprl.py ppo --env_id CartPole-v1

test: install
	$(PY) -m pytest -q -n 2 --dist worksteal tests

lint: install
	$(VENV)/bin/ruff check sheeprl tests benchmarks
	$(VENV)/bin/ruff format --check sheeprl tests benchmarks

format: install
	$(VENV)/bin/ruff format sheeprl tests benchmarks
	$(VENV)/bin/ruff check --fix sheeprl tests benchmarks

bench: install
	$(PY) benchmarks/ppo_cartpole.py

clean:
	rm -rf $(VENV) build *.egg-info
