# Every target creates what it needs and is quick when nothing changed.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
BUILD ?= build
IGC_CUDA ?= AUTO
CUDA_ARCHS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.requirements.stamp

.PHONY: venv ops test bench clean

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

test: venv ops
	$(VPY) -m pytest tests $(PYTEST_ARGS)

bench: venv ops
	$(VPY) tools/bench_reorder.py

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
