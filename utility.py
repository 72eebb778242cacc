"""Shared helpers: loading the operator plugin, its plain C entry points, and counting the
parameters and multiply-adds of any symbol.

MXNet is imported where it is used, so the plain C entry points (`reorder_entry_point`) also
serve a machine with PyTorch and no MXNet, e.g. a Hopper GPU that mxnet-cu112 cannot drive."""
import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
OPS_LIB_ENV = "IGC_OPS_LIB"
DEFAULT_OPS_LIB = os.path.join(PROJECT_DIR, "build", "libigc_ops.so")

_loaded_ops_lib = None


class OpsLibraryError(RuntimeError):
    """The operator plugin is missing or cannot be loaded."""


def ops_library_path():
    """Where `load_ops` looks: $IGC_OPS_LIB if set, else build/libigc_ops.so (absolute)."""
    return os.path.abspath(os.environ.get(OPS_LIB_ENV) or DEFAULT_OPS_LIB)


def load_ops(path=None):
    """Load the IGC operator plugin once per process; afterwards mx.nd/mx.sym.Reorder exist.

    Returns the absolute path of the loaded library. A second call is free; asking for a
    different library after one is loaded is an error (MXNet cannot unload or replace ops).
    """
    global _loaded_ops_lib
    path = os.path.abspath(path) if path else ops_library_path()
    if _loaded_ops_lib is not None:
        if path != _loaded_ops_lib:
            raise OpsLibraryError(
                f"IGC operator library {_loaded_ops_lib} is already loaded; "
                f"cannot also load {path}")
        return _loaded_ops_lib
    if not os.path.isfile(path):
        hint = (f"${OPS_LIB_ENV} points to it" if os.environ.get(OPS_LIB_ENV)
                else f"run `make ops` in {PROJECT_DIR} to build it, or set ${OPS_LIB_ENV}")
        raise OpsLibraryError(f"IGC operator library not found at {path} ({hint})")
    import mxnet as mx
    try:
        mx.library.load(path, verbose=False)
    except mx.base.MXNetError as err:
        raise OpsLibraryError(f"cannot load IGC operator library {path}: {err}") from err
    _loaded_ops_lib = path
    return path


def setup_process():
    """The process-wide settings of the project's commands, made by their main() (train_model.py,
    train_imagenet.py, tools/score.py, predict.py, export_onnx.py), never on import: MXNet's
    per-bind "Subgraph backend MKLDNN is activated" line off (it would bury the log), freed
    memory kept for reuse (keep_freed_memory), the calling thread's own OpenMP regions serial
    (serial_caller) and grad_req 'add' refused where a plugin op would overwrite the gradient
    (guard_grad_req)."""
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    keep_freed_memory()
    serial_caller()
    guard_grad_req()


# glibc's malloc gives memory back to the OS: allocations above its mmap threshold are unmapped
# on free, and the top of the heap is trimmed. MXNet and oneDNN allocate and free buffers of
# tens of MB in every training step, so each step faulted in about 180,000 fresh pages
# (igcv3_cifar, batch 64: 0.34 s of system time in a 2.1 s step). Kept memory is reused instead.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
KEEP_MEMORY_ENV = "IGC_KEEP_FREED_MEMORY"


def keep_freed_memory():
    """Make glibc's malloc keep freed memory for reuse (one arena, no mmap'ed chunks, no heap
    trimming), so that big buffers allocated again do not page-fault. Process-wide: the
    process's resident size stays at its peak. Called by setup_process and the benchmarks;
    $IGC_KEEP_FREED_MEMORY=0 turns it off. True when applied (glibc only)."""
    if os.environ.get(KEEP_MEMORY_ENV, "1") == "0":
        return False
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    return all(mallopt(option, value) == 1 for option, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1)))


# libgomp counts the threads of every team it has started (each team leader's workers) and, while
# that count exceeds the CPUs, lets an idle worker spin 100 times instead of about 300,000 before
# it sleeps in the kernel. MXNet runs every op on its engine worker, which leads one team; the
# thread that drives MXNet leads another as soon as it makes a large synchronous copy (asnumpy,
# mx.nd.array: a parallel copy). From then on, with as many OpenMP threads as CPUs, every worker
# sleeps between two parallel regions and each region starts by waking it: a batch-1 MobileNetV2
# on 2 threads made about 55 context switches per call.
SERIAL_CALLER_ENV = "IGC_SERIAL_CALLER"


def serial_caller():
    """Make the calling thread's own OpenMP regions (MXNet's synchronous copies) run on that
    thread alone, so that MXNet's engine worker leads the only team and its workers keep
    spinning between the ops' parallel regions. Ops keep their threads (the engine worker's
    setting is its own). Call it from the thread that drives MXNet before it copies any array;
    called by setup_process and the benchmarks; $IGC_SERIAL_CALLER=0 turns it off. True when
    applied."""
    if os.environ.get(SERIAL_CALLER_ENV, "1") == "0":
        return False
    import ctypes

    import mxnet as mx
    mx.base.check_call(mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(1)))
    return True


# lib_api hands a plugin op no write request (MXNet 1.9's CustomFComputeDispatcher drops it), so
# the kernels always overwrite their outputs: a gradient asked to accumulate (grad_req='add')
# into a variable that a plugin op reads directly would silently be replaced instead.
def check_grad_req(symbol, grad_req, with_grad=None):
    """ValueError if `grad_req` (a string, a list in list_arguments order, or a dict) asks for
    'add' on an argument that an op of the loaded plugin reads. `with_grad`: the arguments that
    get a gradient array at all (Symbol.bind's args_grad); None: every argument."""
    names = symbol.list_arguments()
    if isinstance(grad_req, str):
        requests = dict.fromkeys(names, grad_req)
    elif isinstance(grad_req, (list, tuple)):
        requests = dict(zip(names, grad_req))
    elif isinstance(grad_req, dict):
        requests = grad_req
    else:
        return  # MXNet reports the malformed value itself
    adding = {name for name, req in requests.items()
              if req == "add" and (with_grad is None or name in with_grad)}
    if not adding:
        return
    plugin_ops = set(plugin_op_devices())
    nodes = _graph_nodes(symbol)
    refused = [f"{nodes[entry[0]]['name']!r} (read by {node['op']} {node['name']!r})"
               for node in nodes if node["op"] in plugin_ops for entry in node["inputs"]
               if nodes[entry[0]]["name"] in adding]  # argument names: variables only
    if refused:
        raise ValueError(
            f"grad_req 'add' cannot be honoured for {', '.join(refused)}: MXNet's extension API "
            "gives plugin ops no write request, so the gradient would be overwritten, not "
            "accumulated; use grad_req 'write' there and sum the gradients yourself, or a "
            "network built with conv_impl 'mxnet', where no plugin op reads a variable")


def guard_grad_req():
    """Makes Symbol.bind and Symbol.simple_bind (hence Module.bind, which calls simple_bind) run
    check_grad_req first, for the whole process (setup_process calls it; a second call changes
    nothing). Gluon's autograd and CachedOp do not pass through them."""
    import mxnet as mx
    symbol_class = mx.symbol.Symbol
    if getattr(symbol_class.simple_bind, "igc_checks_grad_req", False):
        return
    simple_bind, bind = symbol_class.simple_bind, symbol_class.bind

    @functools.wraps(simple_bind)
    def checked_simple_bind(self, ctx, grad_req="write", *args, **kwargs):
        check_grad_req(self, grad_req)
        return simple_bind(self, ctx, grad_req, *args, **kwargs)

    @functools.wraps(bind)
    def checked_bind(self, ctx, args, args_grad=None, grad_req="write", *rest, **kwargs):
        if isinstance(args_grad, dict):
            with_grad = {name for name, array in args_grad.items() if array is not None}
        else:
            with_grad = set() if args_grad is None else None
        check_grad_req(self, grad_req, with_grad)
        return bind(self, ctx, args, args_grad, grad_req, *rest, **kwargs)

    checked_simple_bind.igc_checks_grad_req = True
    symbol_class.simple_bind, symbol_class.bind = checked_simple_bind, checked_bind


def plugin_op_devices():
    """{op name: devices} of the loaded plugin, read from the library itself: the devices ('cpu',
    'gpu') for which it registers both a forward and a backward function (only a forward, for an
    op that registers no backward at all). Loads the plugin."""
    global _plugin_op_devices
    path = load_ops()
    if _plugin_op_devices is None:
        _plugin_op_devices = _registered_op_devices(path)
    return _plugin_op_devices


_plugin_op_devices = None
LIB_API_VERSION = 11  # MXNet 1.9's lib_api: the layout _opRegGet fills in


def _registered_op_devices(path):
    """What lib_api's _opRegGet (the function MXNet calls at load time) reports for each op."""
    import ctypes
    lib = ctypes.CDLL(path)
    if lib._opVersion() != LIB_API_VERSION:
        raise OpsLibraryError(f"{path} uses lib_api version {lib._opVersion()}, not "
                              f"{LIB_API_VERSION} (MXNet 1.9)")
    strings = ctypes.POINTER(ctypes.c_char_p)
    devices = {}
    for index in range(lib._opRegSize()):
        name, forward, backward = ctypes.c_char_p(), strings(), strings()
        counts = [ctypes.c_int() for _ in range(4)]  # is-subgraph-op, forward, backward, state
        pointers = [ctypes.c_void_p() for _ in range(9)]  # functions we do not call
        lib._opRegGet(index, ctypes.byref(name), ctypes.byref(counts[0]), ctypes.byref(forward),
                      ctypes.byref(pointers[0]), ctypes.byref(counts[1]), ctypes.byref(backward),
                      ctypes.byref(pointers[1]), ctypes.byref(counts[2]),
                      ctypes.byref(pointers[2]), ctypes.byref(pointers[3]),
                      ctypes.byref(counts[3]), *(ctypes.byref(p) for p in pointers[4:]))
        # Each call appends the registration to the op's vectors again: read them as sets.
        forwards = {forward[i].decode() for i in range(counts[1].value)}
        backwards = {backward[i].decode() for i in range(counts[2].value)}
        # An op with no backward anywhere is forward-only (BatchNormMoments, read through
        # BlockGrad): its forward devices are where it runs.
        devices[name.value.decode()] = tuple(sorted(forwards & backwards if backwards
                                                    else forwards))
    return devices


DEFAULT_CUDA_KERNELS_LIB = os.path.join(PROJECT_DIR, "build", "libigc_cuda_kernels.so")
MX_DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2}


def reorder_entry_point(device="cpu", path=None):
    """A Reorder kernel behind its plain C entry point, as a ctypes function, without MXNet.

    Signature: (in_ptr, out_ptr, outer, channels, inner, groups, dtype_code[, stream]) -> int,
    0 on success; `inner` counts elements per channel, dtype codes are MX_DTYPE_CODES. 'cpu'
    (igc_reorder_cpu in the plugin) lets benchmarks time the kernel apart from MXNet's dispatch;
    'cuda' (igc_reorder_cuda in build/libigc_cuda_kernels.so, built when CMake found nvcc) takes
    a cudaStream_t and lets the kernel run from any CUDA framework (tests use PyTorch), also on
    GPUs that the prebuilt mxnet-cu112 cannot drive.
    """
    import ctypes
    default, symbol = {"cpu": (DEFAULT_OPS_LIB, "igc_reorder_cpu"),
                       "cuda": (DEFAULT_CUDA_KERNELS_LIB, "igc_reorder_cuda")}[device]
    path = os.path.abspath(path or default)
    if not os.path.isfile(path):
        raise OpsLibraryError(f"Reorder kernel library not found at {path} (run `make ops`; "
                              "the CUDA kernels need nvcc on PATH)")
    fn = getattr(ctypes.CDLL(path), symbol)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int] + (
                       [ctypes.c_void_p] if device == "cuda" else [])
    fn.restype = ctypes.c_int
    return fn


# Counting: parameters and multiply-adds of any symbol (our builders or the released graphs).
_CONV_OPS = ("Convolution", "IGCConv")


def _graph_nodes(symbol):
    return json.loads(symbol.tojson())["nodes"]


def _learnable_arguments(symbol, data_shape):
    """[(argument name, shape, kind)] with kind 'conv', 'fc', 'bn' or 'other', each once.

    Learnable = every argument except the input `data` and `*_label` variables; BN running
    statistics are auxiliary states, so they never appear here.
    """
    arg_shapes, _, _ = symbol.infer_shape(data=tuple(data_shape))
    if arg_shapes is None:
        raise ValueError(f"cannot infer the shapes of the symbol for data shape {data_shape}")
    nodes = _graph_nodes(symbol)
    kinds = {}
    for node in nodes:
        kind = ("conv" if node["op"] in _CONV_OPS else "fc" if node["op"] == "FullyConnected"
                else "bn" if node["op"] == "BatchNorm" else "other")
        for i in node["inputs"]:
            kinds.setdefault(nodes[i[0]]["name"], kind)
    return [(name, shape, kinds.get(name, "other"))
            for name, shape in zip(symbol.list_arguments(), arg_shapes)
            if name != "data" and not name.endswith("_label")]


def layer_costs(symbol, data_shape):
    """[{'name', 'op', 'params', 'macs'}] per operator node that owns learnable arguments (each
    argument counted at its first consumer); macs per sample as in `count_macs`."""
    internals = symbol.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(data=tuple(data_shape))
    if out_shapes is None:
        raise ValueError(f"cannot infer the shapes of the symbol for data shape {data_shape}")
    args = dict(zip(internals.list_arguments(), arg_shapes))
    outs = dict(zip(internals.list_outputs(), out_shapes))
    learnable = {name for name, _, _ in _learnable_arguments(symbol, data_shape)}
    nodes, seen, rows = _graph_nodes(symbol), set(), []
    for node in nodes:
        inputs = [nodes[i[0]]["name"] for i in node["inputs"]]
        owned = [n for n in inputs if n in learnable and n not in seen]
        seen.update(owned)
        macs = 0
        if node["op"] in _CONV_OPS + ("FullyConnected",):
            weight = args[inputs[1]]
            macs = int(np.prod(outs[node["name"] + "_output"][1:])) * int(np.prod(weight[1:]))
        if owned or macs:
            rows.append({"name": node["name"], "op": node["op"], "macs": macs,
                         "params": sum(int(np.prod(args[n])) for n in owned)})
    return rows


def permutation_shapes(symbol, data_shape):
    """[(output shape, g)] of the Reorder nodes of `symbol` for input `data_shape`, each distinct
    one once, in graph order."""
    internals = symbol.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=tuple(data_shape))
    if out_shapes is None:
        raise ValueError(f"cannot infer the shapes of the symbol for data shape {data_shape}")
    outs = dict(zip(internals.list_outputs(), out_shapes))
    found = []
    for node in _graph_nodes(symbol):
        if node["op"] == "Reorder":
            item = (tuple(outs[node["name"] + "_output"]), int(node["attrs"]["branch_factor"]))
            if item not in found:
                found.append(item)
    return found


def count_params(symbol, data_shape):
    """Learnable parameters: {'conv', 'fc', 'bn', 'total'} (BN = gamma + beta; 'total' also
    holds any other learnable argument). `data_shape` is the NCHW shape of `data`."""
    counts = {"conv": 0, "fc": 0, "bn": 0, "total": 0}
    for _, shape, kind in _learnable_arguments(symbol, data_shape):
        size = int(np.prod(shape))
        counts["total"] += size
        if kind in counts:
            counts[kind] += size
    return counts


def count_macs(symbol, data_shape):
    """Multiply-adds for one sample: {'conv', 'fc', 'total'} (convolutions incl. IGCConv, and
    fully connected layers; biases, BN, pooling and element-wise ops are not counted)."""
    counts = {"conv": 0, "fc": 0, "total": 0}
    for layer in layer_costs(symbol, data_shape):
        if layer["macs"]:
            counts["fc" if layer["op"] == "FullyConnected" else "conv"] += layer["macs"]
    counts["total"] = counts["conv"] + counts["fc"]
    return counts


def file_sha256(path):
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def captured_stderr(lines):
    """Collect what native code prints on file descriptor 2 during the block into `lines`
    (libjpeg's "Corrupt JPEG data" warnings name no file: the caller adds it)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines += [line.decode(errors="replace").strip() for line in captured
                      if line.strip()]
