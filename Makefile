# Fresh-machine entry points: `make demo` and `make test` each create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := runs/demo
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND := tensorflow

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Train from scratch on six classes of the built-in creatures benchmark (drawn on first use),
# then evaluate (metrics, OoD FPR95, purity) and write the HTML report of prototypes and
# decisions. `--dataset=synthetic` is the older, smaller built-in set.
demo: $(STAMP)
	$(PY) -m trainers.run --dataset=creatures_demo --log_dir=$(RUN)
	$(PY) -m trainers.evaluate --model $(RUN)
	$(PY) -m trainers.explain --model $(RUN) --report
	@echo "Metrics:    $(CURDIR)/$(RUN)/metrics.json"
	@echo "Evaluation: $(CURDIR)/$(RUN)/evaluation.md (and evaluation.json)"
	@echo "Report:     file://$(CURDIR)/$(RUN)/report/index.html"

# Installs no system packages: the HTML report's browser test runs when `chromium` is on
# PATH and is skipped (saying how to enable it) otherwise; .ci/run installs it.
test: $(STAMP)
	$(PY) -m pytest -q -ra

clean:
	rm -rf runs .cache .pytest_cache
