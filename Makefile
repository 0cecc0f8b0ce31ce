# Two commands do everything on a fresh Debian machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
APT_TOOLS := dcmtk orthanc chromium poppler-utils fonts-dejavu-core openssl

.PHONY: run test bench system-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP) $@

# Loads sample_dicom/ on the first start (an empty index), then serves.
run: $(STAMP)
	$(BIN)/pacs import --if-empty $(wildcard sample_dicom/*/)
	$(BIN)/pacs serve

system-tools:
	@missing=""; for tool in storescu Orthanc chromium pdftotext openssl; do command -v $$tool >/dev/null || \
		[ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; done; \
	[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing DejaVuSans.ttf"; \
	if [ -n "$$missing" ]; then \
		echo "installing system tools:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$$SUDO apt-get install -y -qq $(APT_TOOLS) >/dev/null; fi

test: $(TEST_STAMP) system-tools
	$(BIN)/ruff check .
	$(BIN)/pytest -q

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP) $(TEST_STAMP) $@

bench: $(BENCH_STAMP) system-tools
	$(BIN)/python bench/ingest.py
