# The README's two commands: `make test` and `make demo`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?=
STAMP  := $(VENV)/.imgcls-installed

.PHONY: test demo setup clean bench

setup: $(STAMP)

# Re-run the set-up when the project's requirements or the torch installer change.
$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(STAMP)
	bash scripts/install_browser.sh
	$(PY) -m pytest -q

demo: $(STAMP)
	bash scripts/demo.sh $(PY) "$(DATA)"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
