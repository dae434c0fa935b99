# GasGuard: every target sets itself up on a fresh machine.
# make demo   - the simulated district, on embedded defaults
# make test   - the whole test suite

PY        ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
NODE_MODS := tools/sim/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs
TAHU_MODS := testing/tahu/node_modules/sparkplug-payload/package.json
JOBS      ?= 2

.PHONY: demo test setup clean lint typecheck-firmware mpy-check mosquitto postgresql chromium bench web-screenshots

# The demo needs an MQTT broker: mosquitto when installed, else amqtt (pure Python), installed here on first use.
# DEMO_ARGS: e.g. --fast, --no-tui, --speed 60, --keep (gasguard sim demo --help)
# (only what the demo runs on: no PostgreSQL, Chromium or test peers to install for it)
demo: $(STAMP) $(NODE_MODS)
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || $(VPY) -c "import amqtt" 2>/dev/null; then :; \
	else \
	  echo "mosquitto is missing: installing the pure-Python broker amqtt 0.11.4 into $(VENV) for the demo"; \
	  $(VPY) -m pip install --quiet -c requirements.lock 'amqtt==0.11.4' \
	    || { echo "could not install amqtt: install mosquitto ('sudo apt-get install mosquitto') and re-run make demo"; exit 1; }; \
	fi
	$(VENV)/bin/gasguard sim demo $(DEMO_ARGS)

test: setup
	$(VPY) -m pytest -n $(JOBS) -v $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/gasguard bench all

setup: $(STAMP) $(NODE_MODS) $(TAHU_MODS) mosquitto postgresql chromium

$(STAMP): pyproject.toml requirements.lock setup.py gateway/_lane.c
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip==24.3.1
	$(VPY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

$(NODE_MODS): tools/sim/package.json tools/sim/package-lock.json
	@command -v node >/dev/null || { echo "node (>= 18) is needed to run MicroPython on the host: apt-get install nodejs"; exit 1; }
	cd tools/sim && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_MODS)

# Eclipse Tahu's Sparkplug B packages: the independent decoder and host the Sparkplug tests check against
$(TAHU_MODS): testing/tahu/package.json testing/tahu/package-lock.json
	@command -v node >/dev/null || { echo "node (>= 18) is needed for the Sparkplug tests: apt-get install nodejs"; exit 1; }
	cd testing/tahu && npm ci --no-audit --no-fund --loglevel=error
	touch $(TAHU_MODS)

# The real broker for tests (Debian's mosquitto). Installed when missing and we are root.
# PostgreSQL server binaries for the command store's tests (each test run starts a throwaway cluster with
# initdb + pg_ctl; nothing is configured system-wide). Installed when missing and we are root.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
	  echo "installing postgresql (Debian package; the tests start their own throwaway cluster)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	    || { echo "apt-get install postgresql failed: install it by hand, then re-run make"; exit 1; }; \
	else \
	  echo "PostgreSQL is missing and this is not root: run 'sudo apt-get install postgresql' (the command store's tests run on SQLite and PostgreSQL)"; \
	fi

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
	  echo "installing mosquitto (Debian package)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) \
	    || { echo "apt-get install mosquitto failed: install it by hand, then re-run make"; exit 1; }; \
	else \
	  echo "mosquitto is missing and this is not root: run 'sudo apt-get install mosquitto' (tests need a real broker; make demo falls back to amqtt, installed into .venv on first use)"; \
	fi

# The web console's browser tests drive Debian's headless Chromium (gasguard.testing.chromium), and its
# screenshots need a CJK font (fonts-wqy-microhei: without it the Chinese report is boxes). Installed when
# missing and we are root, as mosquitto is.
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -e $(CJK_FONT) ]; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
	  echo "installing chromium, chromium-driver and fonts-wqy-microhei (Debian packages)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null) \
	    || { echo "apt-get install chromium chromium-driver fonts-wqy-microhei failed: install them by hand, then re-run make"; exit 1; }; \
	else \
	  echo "chromium or its CJK font is missing and this is not root: run 'sudo apt-get install chromium chromium-driver fonts-wqy-microhei' (the web console's browser tests and screenshots need them)"; \
	fi

# Screenshots of the web console for docs/web/ (a CJK font makes the Chinese legible: fonts-wqy-microhei,
# installed by the chromium target)
web-screenshots: $(STAMP) chromium
	$(VPY) -m gasguard.tools.demo.web_screenshots docs/web

clean:
	rm -rf $(VENV) tools/sim/node_modules testing/tahu/node_modules build *.egg-info
