.PHONY: install test lint fmt bench demo
install:
	pip install torch==2.13.0 -e ".[test]" -c constraints.txt
test:
	pytest
lint:
	ruff check . && ruff format --check .
fmt:
	ruff check --fix . && ruff format .
bench:
	for f in benchmarks/*.py; do python $$f || exit 1; done
demo:
	ava256 demo
