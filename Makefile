# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3

.PHONY: install demo test

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

demo: install
	bash examples/demo.sh

test: install
	$(PYTHON) -m pytest
