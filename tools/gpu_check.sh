#!/usr/bin/env bash
# Device check for a machine with an NVIDIA GPU (`make gpu-check`): builds the CUDA kernels for
# the GPU present, runs the CUDA tests (the plain C entry point from PyTorch on any GPU; Reorder
# and a GPU-built network through MXNet where mxnet-cu112 runs, sm_50-86), the C-entry-point
# tests again under compute-sanitizer's memcheck where the tool exists (on PATH or beside nvcc),
# and the Reorder bandwidth benchmark against a device-to-device copy, then prints one table of
# the steps and the benchmark's own table. A few minutes; each step has a time limit. Exits 2
# at once, with one line, where there is no GPU or no nvcc; 1 when a step failed or could not
# run.
#
#   tools/gpu_check.sh
#
# Environment (all optional):
#   VENV           the project venv (default .venv). When it holds MXNet the plugin is built
#                  against it; when that MXNet is mxnet-cu112 (make venv CUDA=112) and the GPU
#                  is sm_50-89, the MXNet GPU tests run with it. Without MXNet only the kernel
#                  library is built (CMake IGC_PLUGIN=OFF), e.g. on a Hopper machine.
#   PYTHON         a Python with a CUDA build of PyTorch and pytest, for the C-entry-point tests
#                  and the benchmark (default: $VENV/bin/python if it has one, else python3).
#   CUDA_ARCHS     what to build for (default: the GPU's own sm_XY). The build is build/, as
#                  for `make ops`, since the tests look for the libraries there.
#   REORDER_BENCH  the Reorder benchmark, run with --cuda (default benchmarks/reorder.py).
#   LOG_DIR        each step's full output (default build/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BUILD=build
LOG_DIR=${LOG_DIR:-$BUILD/gpu-check}
REORDER_BENCH=${REORDER_BENCH:-benchmarks/reorder.py}

die() { echo "gpu_check: $*" >&2; exit 2; }

command -v nvidia-smi >/dev/null 2>&1 \
  || die "no NVIDIA GPU: nvidia-smi is not on PATH (this check needs an NVIDIA GPU and driver)"
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1) \
  || gpu=
[ -n "$gpu" ] || die "no NVIDIA GPU: nvidia-smi lists none ($(nvidia-smi -L 2>&1 | head -n 1))"
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1) || cc=
cc=${cc// /}
if ! command -v nvcc >/dev/null 2>&1; then
  [ -x /usr/local/cuda/bin/nvcc ] || die "no nvcc on PATH or in /usr/local/cuda/bin"
  export PATH=/usr/local/cuda/bin:$PATH
fi
nvcc_version=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')

has_cuda_torch() {
  "$1" -c "import pytest, torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=
  for candidate in "$VENV/bin/python" python3; do
    if has_cuda_torch "$candidate"; then PYTHON=$candidate; break; fi
  done
fi
if [ -n "$PYTHON" ]; then
  torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)" 2>/dev/null)
  [ -n "$cc" ] || cc=$("$PYTHON" -c \
    "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
fi
[[ $cc =~ ^[0-9]+\.[0-9]+$ ]] \
  || die "cannot read the GPU's compute capability (nvidia-smi too old and no PyTorch): '$cc'"
arch=${CUDA_ARCHS:-${cc/./}}

mxnet_in_venv() {  # the venv's MXNet distribution: mxnet, mxnet-cu112 or nothing
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as m
for name in ("mxnet-cu112", "mxnet"):
    try:
        m.version(name)
        print(name)
        break
    except m.PackageNotFoundError:
        pass
EOF
}
mxnet_dist=$(mxnet_in_venv)

mkdir -p "$LOG_DIR"
ROWS=()
FAILED=0
row() {  # row STEP RESULT SECONDS; a result in capitals (FAILED, NOT RUN, ...) fails the check
  ROWS+=("$1|$2|$3")
  case $2 in FAILED* | INCOMPLETE* | NOT\ RUN*) FAILED=1 ;; esac
}
step() {  # step NAME LIMIT_S LOG COMMAND...: runs it under a time limit, echoes its status
  local name=$1 limit=$2 log=$3; shift 3
  local start=$SECONDS rc
  timeout "$limit" "$@" >"$log" 2>&1
  rc=$?
  STEP_SECONDS=$((SECONDS - start))
  [ $rc -eq 124 ] && echo "timed out after ${limit} s" >>"$log"
  return $rc
}
pytest_summary() {  # the counts of pytest's closing line, e.g. "34 passed, 1 skipped"
  grep -E ' in [0-9.]+s' "$1" | tail -n 1 | sed -e 's/^=* *//' -e 's/ in [0-9.]*s.*$//'
}
passed_or_incomplete() {  # a GPU test skipped here is a check not made
  local summary
  summary=$(pytest_summary "$1")
  case $summary in
    *skipped*) echo "INCOMPLETE: $summary (see the log)" ;;
    *) echo "ok: $summary" ;;
  esac
}

# 1. Build: the plugin and the kernels where the venv has MXNet, else the kernel library alone.
plugin=OFF
[ -n "$mxnet_dist" ] && plugin=ON
configure=(cmake -S . -B "$BUILD" -DIGC_CUDA=ON -DIGC_PLUGIN=$plugin
           -DCMAKE_CUDA_ARCHITECTURES="$arch")
[ $plugin = ON ] && configure+=(-DPython3_EXECUTABLE="$(cd "$VENV/bin" && pwd)/python")
if step build 240 "$LOG_DIR/build.log" bash -c \
    "$(printf '%q ' "${configure[@]}") && cmake --build $(printf '%q' "$BUILD") -j $(nproc)"; then
  what="kernels for sm_$arch"
  [ $plugin = ON ] && what="$what + plugin ($mxnet_dist)"
  row "build ($what)" ok "$STEP_SECONDS"
  built=1
else
  row "build (sm_$arch, nvcc $nvcc_version)" "FAILED: $(tail -n 1 "$LOG_DIR/build.log")" \
    "$STEP_SECONDS"
  built=0
fi

# 2. The CUDA kernel through its plain C entry point, from PyTorch, bit-exact vs channel_shuffle.
if [ -z "$PYTHON" ]; then
  row "C entry point tests (PyTorch)" "NOT RUN: no Python with a CUDA PyTorch (set PYTHON)" 0
elif [ $built = 1 ]; then
  if step c-tests 120 "$LOG_DIR/c_entry_tests.log" "$PYTHON" -m pytest -q -p no:cacheprovider \
      tests/test_reorder_cuda.py -k "not mxnet"; then
    result=$(passed_or_incomplete "$LOG_DIR/c_entry_tests.log")
  else
    result="FAILED: $(pytest_summary "$LOG_DIR/c_entry_tests.log")"
  fi
  row "tests/test_reorder_cuda.py, C entry point (PyTorch)" "$result" "$STEP_SECONDS"
fi

# 3. The same tests under compute-sanitizer's memcheck: out-of-bounds and misaligned accesses
# that happen to leave the results right.
sanitizer=$(command -v compute-sanitizer 2>/dev/null) \
  || sanitizer=$(dirname "$(command -v nvcc)")/compute-sanitizer
if [ -z "$PYTHON" ] || [ $built = 0 ]; then
  :  # reported above
elif [ ! -x "$sanitizer" ]; then
  row "memcheck (compute-sanitizer)" "skipped: no compute-sanitizer on PATH or beside nvcc" 0
else
  if step memcheck 300 "$LOG_DIR/memcheck.log" "$sanitizer" --tool memcheck --error-exitcode 3 \
      "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_reorder_cuda.py -k "not mxnet"; then
    result=$(passed_or_incomplete "$LOG_DIR/memcheck.log")
  else
    result="FAILED: $(pytest_summary "$LOG_DIR/memcheck.log")"
  fi
  errors=$(grep -o 'ERROR SUMMARY: [0-9]* errors*' "$LOG_DIR/memcheck.log" | tail -n 1)
  row "tests/test_reorder_cuda.py under memcheck" \
    "$result; ${errors:-no ERROR SUMMARY (see the log)}" "$STEP_SECONDS"
fi

# 4. Through MXNet: Reorder on mx.gpu() and a GPU-built network, where mxnet-cu112 can run.
mx_tests=(tests/test_reorder_cuda.py -k "mxnet or runs_there" tests/test_network_devices.py)
if [ "$mxnet_dist" != mxnet-cu112 ]; then
  row "MXNet on the GPU" "skipped: no mxnet-cu112 in $VENV (make venv CUDA=112)" 0
elif [ "${cc%%.*}" -ge 9 ]; then
  row "MXNet on the GPU" "skipped: mxnet-cu112 has no code for sm_${cc/./} (sm_50-86 only)" 0
elif [ $built = 1 ]; then
  # TF32 would make cuDNN's float32 convolutions differ from the CPU's by more than rounding.
  if step mx-tests 180 "$LOG_DIR/mxnet_gpu_tests.log" env NVIDIA_TF32_OVERRIDE=0 \
      "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${mx_tests[@]}"; then
    result=$(passed_or_incomplete "$LOG_DIR/mxnet_gpu_tests.log")
  else
    result="FAILED: $(pytest_summary "$LOG_DIR/mxnet_gpu_tests.log")"
  fi
  row "Reorder and plain_igc through MXNet ($mxnet_dist)" "$result" "$STEP_SECONDS"
fi

# 5. Reorder bandwidth against a device-to-device copy of the same bytes.
if [ -n "$PYTHON" ] && [ $built = 1 ]; then
  if step bench 240 "$LOG_DIR/bench.log" "$PYTHON" "$REORDER_BENCH" --cuda; then
    row "$REORDER_BENCH --cuda" "ok (table below)" "$STEP_SECONDS"
  else
    row "$REORDER_BENCH --cuda" "FAILED: $(tail -n 1 "$LOG_DIR/bench.log")" "$STEP_SECONDS"
  fi
fi

echo "GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'): $gpu (sm_${cc/./}), nvcc $nvcc_version," \
  "PyTorch ${torch_version:-none}, MXNet ${mxnet_dist:-none}"
width=0
for r in "${ROWS[@]}"; do name=${r%%|*}; [ ${#name} -gt $width ] && width=${#name}; done
printf "| %-${width}s | %6s | %s\n" step "time" result
printf "|%s|--------|--------\n" "$(printf -- '-%.0s' $(seq 1 $((width + 2))))"
for r in "${ROWS[@]}"; do
  IFS='|' read -r name result seconds <<<"$r"
  printf "| %-${width}s | %5ss | %s\n" "$name" "$seconds" "$result"
done
if [ -s "$LOG_DIR/bench.log" ]; then
  echo
  cat "$LOG_DIR/bench.log"
fi
echo "logs: $LOG_DIR/"
exit $FAILED
