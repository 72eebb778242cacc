# Every target creates what it needs and is quick when nothing changed.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
BUILD ?= build
IGC_CUDA ?= AUTO
CUDA_ARCHS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.requirements.stamp
# The benchmark environment: the runtime pins plus CPU torch, onnx, onnxruntime (never in
# requirements.txt). It loads the same build/libigc_ops.so.
BENCH_VENV ?= .venv-bench
BPY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.requirements.stamp
# `make bench` runs each benchmark in its --quick mode (under 15 minutes on 2 cores);
# `make bench FULL=1` runs the full settings.
QUICK := $(if $(FULL),,--quick)

.PHONY: venv bench-venv ops lint test bench demo clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

ops: $(STAMP)
	@cmake -S . -B $(BUILD) -DPython3_EXECUTABLE=$(abspath $(VPY)) -DIGC_CUDA=$(IGC_CUDA) \
		$(if $(CUDA_ARCHS),-DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)") >$(BUILD).configure.log 2>&1 \
		|| { cat $(BUILD).configure.log; exit 1; }
	@cmake --build $(BUILD) -j 2 -- --no-print-directory

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: venv ops
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
	$(BPY) benchmarks/reorder.py $(QUICK)
	$(BPY) benchmarks/conv.py $(QUICK)
	$(BPY) benchmarks/permutation_overhead.py $(QUICK)
	$(BPY) benchmarks/train_peers.py $(QUICK)
	$(BPY) benchmarks/inference_peers.py $(QUICK)

# Makes the demo records, trains a small plain_igc on the CPU (about a minute on 2 cores),
# prints the per-epoch table and writes curves.png.
demo: venv ops
	tools/make_rec.sh demo
	rm -rf runs/demo
	$(VPY) train_model.py --dataset demo --network plain_igc --depth 8 --primary-partition 8 \
		--secondary-partition 2 --gpus '' --rand-seed 1 --model-prefix runs/demo/model
	$(VPY) tools/plot_log.py runs/demo/model.log -o curves.png

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
