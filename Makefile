# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python

.PHONY: install demo test lint

install:
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .

demo: install
	$(PYTHON) -m mathse.demo

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
