PY ?= python

.PHONY: lint test bench faults

lint:
	lint-imports
	mypy
	ruff check src

test:
	$(PY) -m pytest -q

faults:
	$(PY) -m pytest -q -s tests/faults

bench:
	$(PY) benchmarks/bench_journal.py
	$(PY) benchmarks/bench_sync.py
	$(PY) benchmarks/bench_rewind.py
