# Every target creates what it needs and is quick when nothing changed.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
BUILD ?= build
IGC_CUDA ?= AUTO
CUDA_ARCHS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.requirements.stamp

.PHONY: venv ops lint test bench demo clean

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

bench: venv ops
	$(VPY) benchmarks/reorder.py
	$(VPY) benchmarks/conv.py
	$(VPY) benchmarks/permutation_overhead.py

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
