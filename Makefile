# letkd — every target does its own set-up on a fresh machine and is quick once set up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.letkd-installed
FMNIST := /usr/share/datasets/fashion-mnist
# torch/torchvision pinned to releases known to work (and available offline on our build machines)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup data test demo bench gpu-payload lint format clean help

help:
	@echo "make test   - set up (venv, package, data) and run the test suite"
	@echo "make demo   - set up and run the Fashion-MNIST demo"
	@echo "make bench  - set up and run the benchmarks (prints ratios)"
	@echo "make lint   - ruff check"
	@echo "make gpu-payload - wheels + Fashion-MNIST for benchmarks/gpu/run.sh on a GPU machine (see docs/benchmarks.md)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) || $(PY) -m pip install -q "torch>=2.1,<2.15" "torchvision>=0.17,<0.30"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

data:
	@if [ -n "$$LETKD_DATA" ] && [ -f "$$LETKD_DATA/fashion-mnist/train-images-idx3-ubyte.gz" ]; then \
	  echo "Fashion-MNIST: using $$LETKD_DATA/fashion-mnist"; \
	elif [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: $(FMNIST)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian package dataset-fashion-mnist ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST not found. Either run 'sudo apt-get install dataset-fashion-mnist'"; \
	  echo "or put the four official *-ubyte.gz files in \$$LETKD_DATA/fashion-mnist/."; \
	  echo "(Without it, tests that need Fashion-MNIST are reported as skipped with this reason.)"; \
	fi

test: setup data
	$(PY) -m pytest -q tests

demo: setup data
	$(PY) -m letkd demo

bench: setup data
	$(PY) -m benchmarks.run_all

gpu-payload: setup
	PIP="$(PY) -m pip" bash benchmarks/gpu/prepare_payload.sh

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

format: setup
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
