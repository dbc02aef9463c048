.PHONY: install test test-fast pipeline benchmark
install:
	python -m pip install -e ".[dev]"
test:        ## everything, as CI runs it
	python -m pytest
test-fast:   ## skip the slow end-to-end tests
	python -m pytest -m "not slow"
pipeline:
	python -m maskflow.pipeline
benchmark:
	python benchmarks/pipeline_timing.py
