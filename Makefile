# Two entry points: `make run` (the service) and `make test` (everything CI checks).
#
# Installing, step by step, each step announced with `==>` and followed by the time it took;
# a long step prints a "still working" line every 8 s. `make run` installs only what the
# service needs (`pip install -e .`); `make test`/`lint` add the `dev` and `eval` extras.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
BENCH ?= ../shared/bench
TORCH_VERSION := 2.13.0
# PyTorch's own index of CPU-only wheels (PyPI's Linux torch is the CUDA build, several GB).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

RUNTIME := $(BIN)/.installed-runtime
DEV := $(BIN)/.installed-dev
TORCH := $(BIN)/.installed-torch

# Prefix of a recipe line: remembers the start, prints a heartbeat every 8 s until the line ends.
HEARTBEAT = start=$$(date +%s); \
	( while sleep 8 >/dev/null; do echo "    ……仍在进行，已用 $$(( $$(date +%s) - start )) 秒"; done ) & \
	trap "kill $$! 2>/dev/null" EXIT;
# Suffix: how long the line took.
TOOK = && echo "    用时 $$(( $$(date +%s) - start )) 秒"

.PHONY: run test test-fast lint eval-gate install install-dev

install: $(RUNTIME)
install-dev: $(DEV)

$(BIN)/python:
	@echo "==> 建立虚拟环境 $(VENV)（$(PYTHON) -m venv）"
	@$(PYTHON) -m venv $(VENV)

# torch first and pinned, and the CPU build where there is no NVIDIA GPU: nvidia-smi works ->
# PyPI (the CUDA build); else PyTorch's CPU index when it answers within 5 s, else PyPI (or
# whatever index pip is configured with), saying so.
$(TORCH): | $(BIN)/python
	@if nvidia-smi >/dev/null 2>&1; then \
	  echo "==> 安装 torch $(TORCH_VERSION)（检测到 NVIDIA GPU：CUDA 版，来自 PyPI）"; \
	  $(HEARTBEAT) $(BIN)/pip install "torch==$(TORCH_VERSION)" $(TOOK); \
	elif $(BIN)/python -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1] + '/torch/', method='HEAD'), timeout=5)" "$(TORCH_CPU_INDEX)" >/dev/null 2>&1; then \
	  echo "==> 安装 torch $(TORCH_VERSION)（CPU 版，来自 $(TORCH_CPU_INDEX)）"; \
	  $(HEARTBEAT) $(BIN)/pip install "torch==$(TORCH_VERSION)" --index-url "$(TORCH_CPU_INDEX)" $(TOOK); \
	else \
	  echo "==> $(TORCH_CPU_INDEX) 连不上：安装 torch $(TORCH_VERSION)，来自 PyPI（及 pip 配置的索引）"; \
	  $(HEARTBEAT) $(BIN)/pip install "torch==$(TORCH_VERSION)" $(TOOK); \
	fi
	@$(BIN)/python -W ignore -c "import torch; c = torch.version.cuda; print(f'    已安装 torch {torch.__version__}（' + (f'CUDA {c}' if c else 'CPU 版') + '）')"
	@touch $@

$(RUNTIME): pyproject.toml $(TORCH)
	@echo "==> 安装运行所需的依赖（pip install -e .）"
	@$(HEARTBEAT) $(BIN)/pip install -e . $(TOOK)
	@touch $@

$(DEV): pyproject.toml $(RUNTIME)
	@echo "==> 安装测试与评测工具（pip install -e '.[dev,eval,milvus]'：pytest、playwright、ruff、mypy、ranx、milvus-lite……）"
	@$(HEARTBEAT) $(BIN)/pip install -e '.[dev,eval,milvus]' $(TOOK)
	@touch $@

run: $(RUNTIME)
	@echo "==> 启动服务（rag serve）"
	$(BIN)/rag serve

lint: $(DEV)
	$(BIN)/ruff check rag tests bench
	$(BIN)/ruff format --check rag tests bench
	$(BIN)/mypy rag

# The fast lane: no model, no server, no browser (under a minute).
test-fast: $(DEV)
	$(BIN)/pytest

eval-gate: $(DEV)
	$(BIN)/rag eval --gate --bench-dir $(BENCH)

test: lint
	$(BIN)/pytest -m ""
	$(MAKE) eval-gate
