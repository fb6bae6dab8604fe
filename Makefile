# Tailor: the two commands the README opens with, plus a few helpers.
#   make demo   set up .venv and run the platform on embedded defaults, walking through it like a user
#   make test   set up .venv and run the whole test suite against real Postgres, Redis and Celery workers

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned to the release whose CPU wheel development machines carry. On a laptop without it,
# point pip at the CPU index so no CUDA build is pulled: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
PIP_TORCH_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

# Test services: the real PostgreSQL and Redis on loopback.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/tailor
TEST_BROKER_URL   ?= redis://127.0.0.1:6379/1
PYTEST_ARGS ?=

.PHONY: demo test install lint services bench-validate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/python -m pip install -q $(PIP_TORCH_ARGS) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[train,dev]"
	@touch $@

install: $(VENV)/.installed

demo: install
	@$(BIN)/tailor demo

services:
	@deploy/local/ensure_services.sh

lint: install
	$(BIN)/ruff check platform workers gpu_runner tests bench
	$(BIN)/lint-imports

test: install services
	$(BIN)/ruff check platform workers gpu_runner tests bench
	$(BIN)/lint-imports
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) HF_HUB_OFFLINE=1 \
	  TAILOR_TINY_MODEL_DIR=$(CURDIR)/var/models/tailor-tiny \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

bench-validate: install
	$(BIN)/python bench/validate_throughput.py

clean:
	rm -rf var .pytest_cache
