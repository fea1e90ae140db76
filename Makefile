# Fresh-machine entry points: `make demo` and `make test` each create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := runs/demo
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND := tensorflow

.PHONY: demo test venv chromium clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Train on the built-in dataset, then evaluate (metrics, OoD FPR95, purity) and write the
# HTML report of prototypes and decisions.
demo: $(STAMP)
	$(PY) -m trainers.run --dataset=synthetic --log_dir=$(RUN)
	$(PY) -m trainers.evaluate --model $(RUN)
	$(PY) -m trainers.explain --model $(RUN) --report
	@echo "Metrics:    $(CURDIR)/$(RUN)/metrics.json"
	@echo "Evaluation: $(CURDIR)/$(RUN)/evaluation.md (and evaluation.json)"
	@echo "Report:     file://$(CURDIR)/$(RUN)/report/index.html"

# Headless Chromium for the HTML report test (Debian package; needs root or sudo).
chromium:
	@command -v chromium >/dev/null 2>&1 || { S=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$S apt-get update -qq && $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "chromium unavailable: tests/html_report_test.py will be skipped"

test: $(STAMP) chromium
	$(PY) -m pytest -q -ra

clean:
	rm -rf runs .cache .pytest_cache
