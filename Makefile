# llmhost: `make run` starts everything locally, `make test` installs and tests everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
SDK_VENV := .venv-sdk
PY := $(VENV)/bin/python
SAM := $(SAM_VENV)/bin/sam
# sam build without Docker needs the Lambda runtime's Python on PATH.
# (A pyenv shim may exist without working, so each candidate must actually run.)
PY313 := $(shell for p in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13 \
	/usr/local/bin/python3.13 /usr/bin/python3.13; do \
	$$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
PY313_DIR := $(if $(PY313),$(patsubst %/,%,$(dir $(PY313))),)
SAM_ENV := AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 PATH="$(PY313_DIR):$$PATH"

.PHONY: run test check lint unit sam-validate sam-build build images bench-coldstart clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli
	touch $@

## run: the API, reconciler and emulated AWS on http://127.0.0.1:8080 (PORT=, SPEED=)
run: $(VENV)/.installed
	$(PY) -m llmhost.local

## test: lint, unit + AWS-emulated tests, sam validate --lint and sam build
test: lint unit sam-validate sam-build

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: $(VENV)/.installed
	$(VENV)/bin/pytest

check: test
	$(VENV)/bin/mypy layers/llmhost/llmhost

sam-validate: $(SAM_VENV)/.installed
	$(SAM_ENV) $(SAM) validate --lint

sam-build build: $(SAM_VENV)/.installed
	@test -n "$(PY313)" || { echo "sam build needs python3.13 on PATH (the Lambda runtime)"; exit 1; }
	$(SAM_ENV) $(SAM) build

## images: resolve container image URIs with the SageMaker Python SDK (build time only)
images:
	test -x $(SDK_VENV)/bin/python || { $(PYTHON) -m venv $(SDK_VENV) && $(SDK_VENV)/bin/pip install --quiet "sagemaker>=3"; }
	$(SDK_VENV)/bin/python layers/tools/resolve_image_uris.py

## bench-coldstart: fresh-process cold start per function vs bare boto3 + sagemaker client
bench-coldstart: $(VENV)/.installed
	$(PY) bench/coldstart.py

clean:
	rm -rf .aws-sam $(VENV) $(SAM_VENV) .pytest_cache .ruff_cache .mypy_cache
