# Every target creates what it needs and is quick when nothing changed.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
BUILD ?= build
IGC_CUDA ?= AUTO
CUDA_ARCHS ?=
PYTEST_ARGS ?=
# CUDA=112: the venv holds mxnet-cu112 and NVIDIA's CUDA 11 library wheels instead of the CPU
# mxnet. A venv made that way stays so (its stamp says so); CUDA=none turns it back.
CUDA ?= $(if $(wildcard $(VENV)/.requirements-cu112.stamp),112,none)
ifeq ($(CUDA),none)
STAMP := $(VENV)/.requirements.stamp
else ifeq ($(CUDA),112)
STAMP := $(VENV)/.requirements-cu112.stamp
else
$(error CUDA=$(CUDA): only CUDA=112 (mxnet-cu112) or CUDA=none (CPU mxnet) is supported)
endif
PIP := $(VPY) -m pip --disable-pip-version-check
TEST_STAMP := $(VENV)/.requirements-test.stamp
# A path file makes this checkout importable (`import network, training`) by the venv's Python
# from any directory, and nowhere else.
CHECKOUT_PTH = $(VPY) -c 'import os, sys, sysconfig; open(os.path.join(sysconfig.get_paths() \
	["purelib"], "igc-mxnet-checkout.pth"), "w").write(sys.argv[1] + "\n")' "$(CURDIR)"

# The benchmark environment: the runtime pins plus CPU torch, onnx, onnxruntime (never in
# requirements.txt). It loads the same build/libigc_ops.so.
BENCH_VENV ?= .venv-bench
BPY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.requirements.stamp
# `make bench` runs each benchmark in its --quick mode (under 15 minutes on 2 cores);
# `make bench FULL=1` runs the full settings.
QUICK := $(if $(FULL),,--quick)

.PHONY: venv bench-venv ops lint test bench demo clean cuda-venv-check gpu-check

venv: $(STAMP) $(TEST_STAMP)

$(VENV)/.requirements.stamp: requirements.txt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.requirements-cu112.stamp
	@! $(PIP) show -q mxnet-cu112 2>/dev/null || $(PIP) uninstall -y -q mxnet-cu112
	@echo "installing requirements.txt into $(VENV) (MXNet 1.9.1, numpy, OpenCV, ruff, pytest:" \
		"about 400 MB, 1-3 minutes)"
	$(PIP) install -q -r requirements.txt
	@$(CHECKOUT_PTH)
	@touch $@

# Several GB of wheels. The CPU mxnet goes first: both wheels install the same `mxnet` package.
$(VENV)/.requirements-cu112.stamp: requirements.txt requirements-cu112.txt tools/cuda_venv.py
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.requirements.stamp
	@! $(PIP) show -q mxnet 2>/dev/null || $(PIP) uninstall -y -q mxnet
	sed '/^mxnet==/d' requirements.txt > $(VENV)/requirements-without-mxnet.txt
	$(PIP) install -q -r $(VENV)/requirements-without-mxnet.txt -r requirements-cu112.txt
	$(VPY) tools/cuda_venv.py link
	@$(CHECKOUT_PTH)
	@touch $@

# onnx / onnxruntime for the export tests, with requirements.txt as constraints so that pip
# keeps numpy at 1.23.5 (and touches no mxnet, CPU or cu112).
$(TEST_STAMP): requirements-test.txt requirements.txt $(STAMP)
	@echo "installing requirements-test.txt into $(VENV) (ONNX, ONNX Runtime: about 100 MB)"
	$(PIP) install -q -r requirements-test.txt -c requirements.txt
	@touch $@

ops: $(STAMP)
	@cmake -S . -B $(BUILD) -DPython3_EXECUTABLE=$(abspath $(VPY)) -DIGC_CUDA=$(IGC_CUDA) \
		-DIGC_PLUGIN=ON $(if $(CUDA_ARCHS),-DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)") \
		>$(BUILD).configure.log 2>&1 \
		|| { cat $(BUILD).configure.log; exit 1; }
	@cmake --build $(BUILD) -j 2 -- --no-print-directory

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	@LC_ALL=C awk 'length > 100 { print FILENAME ":" FNR ": longer than 100 columns"; bad = 1 } \
		END { exit bad }' src/operator/*.cc src/operator/*.h src/operator/*.cu

test: $(TEST_STAMP) ops
	$(VPY) -m pytest tests $(PYTEST_ARGS)

bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): benchmarks/requirements.txt
	@test -x $(BPY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BPY) -m pip install --disable-pip-version-check -q -r benchmarks/requirements.txt
	$(BPY) -c "import numpy, mxnet, torch, onnx, onnxruntime; \
		assert numpy.__version__ == '1.23.5', 'numpy ' + numpy.__version__"
	@touch $@

bench: venv ops bench-venv
	$(BPY) -m pytest -q tests/test_bench_harness.py tests/test_peers.py
	$(CC) -O2 benchmarks/fma_peak.c -o build/fma_peak && build/fma_peak
	$(BPY) benchmarks/reorder.py $(QUICK)
	$(BPY) benchmarks/conv.py $(QUICK)
	$(BPY) benchmarks/permutation_overhead.py $(QUICK)
	$(BPY) benchmarks/train_peers.py $(QUICK)
	$(BPY) benchmarks/inference_peers.py $(QUICK)
	$(BPY) benchmarks/call_overhead.py $(QUICK)
	$(BPY) benchmarks/profile_step.py --family mobilenetv2_cifar
	$(BPY) benchmarks/fusion_ab.py --family mobilenetv2_cifar $(if $(QUICK),--rounds 4)

# Makes the demo records, trains a small plain_igc on the CPU (about a minute on 2 cores),
# prints the per-epoch table and writes curves.png.
demo: venv ops
	tools/make_rec.sh demo
	rm -rf runs/demo
	$(VPY) train_model.py --dataset demo --network plain_igc --depth 8 --primary-partition 8 \
		--secondary-partition 2 --gpus '' --rand-seed 1 --model-prefix runs/demo/model
	$(VPY) tools/plot_log.py runs/demo/model.log -o curves.png

# Opt-in (not part of `make test`): in a `make venv CUDA=112` venv, every library libmxnet.so
# needs resolves inside the venv, except the driver's libcuda.so.1. Needs no GPU.
cuda-venv-check: $(STAMP)
	$(VPY) tools/cuda_venv.py check

# On a machine with an NVIDIA GPU: build the CUDA kernels, run the CUDA tests (under
# compute-sanitizer's memcheck too, where it exists) and the Reorder bandwidth benchmark against a
# device copy, print one table. Needs no venv (PyTorch alone will
# do); exits 2 at once where there is no GPU.
gpu-check:
	VENV=$(VENV) tools/gpu_check.sh

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
