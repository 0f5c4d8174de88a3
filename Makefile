# Two commands for a newcomer: `make demo` and `make test`. Both set up what they need.
# Downloads (Python wheels, the Python environment, Kafka jars) are cached outside the clone in
# $(MQCAST_CACHE), so reruns are quick.

SHELL := /bin/bash
PYTHON ?= python3
export MQCAST_CACHE ?= $(HOME)/.cache/mqcast
VENV := $(MQCAST_CACHE)/venv
BIN := $(VENV)/bin
DEPS_STAMP := $(VENV)/.deps-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup demo test lint unit integration bench clean

$(DEPS_STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "Java 17+ is needed for the local Kafka broker (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed to fetch Kafka (apt-get install maven)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --cache-dir $(MQCAST_CACHE)/pip -e '.[dev]'
	@rm -f $(VENV)/.deps-* && touch $@

# The environment is shared by clones: point it at this checkout every time (seconds).
setup: $(DEPS_STAMP)
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
	@$(BIN)/python -c "import stream._messages, stream._records" 2>/dev/null \
		|| echo "note: stream/_messages.c and _records.c were not compiled (no C compiler?): forecasts are published through the slower Python path"

demo: setup
	$(BIN)/mqcast demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q -m integration tests/integration

# promtool checks the Prometheus alert rules (those tests skip without it). It is unpacked from
# Debian's prometheus package into the cache, not installed: nothing is started or registered.
PROMTOOL := $(MQCAST_CACHE)/bin/promtool
$(PROMTOOL):
	@mkdir -p $(MQCAST_CACHE)/bin
	@tmp=$$(mktemp -d) && cd $$tmp && apt-get download prometheus >/dev/null 2>&1 \
		&& dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool $(PROMTOOL); \
		rm -rf $$tmp; test -x $(PROMTOOL) || echo "promtool unavailable here: alert rule checks will be skipped"

test: lint $(PROMTOOL)
	PATH="$(MQCAST_CACHE)/bin:$$PATH" $(BIN)/pytest -q tests

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf runs .pytest_cache .ruff_cache *.egg-info
