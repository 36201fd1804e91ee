# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The venv gets the CPU build of torch 2.13.0 first, so nothing later pulls a multi-GB CUDA build.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m picovlm demo

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	.venv/bin/ruff check picovlm tests bench

clean:
	rm -rf runs data/demo
