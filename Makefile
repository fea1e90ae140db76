# Fresh-machine entry points: `make demo` and `make test` each create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND := tensorflow

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m trainers.run --dataset=synthetic --log_dir=runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -ra

clean:
	rm -rf runs .cache .pytest_cache
