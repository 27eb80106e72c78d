# Set-up is part of every target: the first run creates .venv and installs
# segpress with its test and codegen extras (torch from PyPI, a few minutes).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test generate bench

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test,dev]"
	@# The page's browser tests (tests/test_page.py) need Debian's Chromium and its driver.
	@if [ "$$(id -u)" = 0 ] && ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null; then \
		apt-get update -q && apt-get install -y -q chromium chromium-driver; fi
	touch $(STAMP)

# The main job: the gRPC server on 127.0.0.1:50051 with its embedded Redis,
# and the HTTP/JSON API and page on 127.0.0.1:8080.
serve: $(STAMP)
	$(VENV)/bin/segpress serve --http-port 8080

# Every test, against a real Redis and a real gRPC server it starts itself.
test: $(STAMP)
	$(VENV)/bin/python -m pytest

# Regenerate client code and the OpenAPI document after editing proto/.
generate: $(STAMP)
	$(VENV)/bin/python clients/generate.py
	$(VENV)/bin/python -m service.openapi

bench: $(STAMP)
	$(VENV)/bin/segpress bench
