"""Inference of IGCV3 and MobileNetV2 (224x224): the project vs PyTorch vs ONNX Runtime.

Per network, batch size and thread count, in turn (harness.py: medians of interleaved rounds):
MXNet in a child process per network and thread count, PyTorch and ONNX Runtime in a peer
process beside it (harness.Peer: MXNet and PyTorch share no OpenMP runtime, as in a user's
process):
- MXNet: the project's graph as a `Module` bound for inference (for_training=False);
- MXNet optimized: the same on `network.optimize_for_inference(symbol, arg_params, aux_params)`
  when the network package has it;
- MXNet unpacked (--unpacked): the same with pack_blocks=False (every IGCBlock on its unpacked
  weights: the kernel with an AVX-512 GEMM, against the channel-blocked one);
- PyTorch: the peer in benchmarks/peers, eval mode under no_grad (checked to have exactly the
  MXNet graph's parameter count before timing);
- ONNX Runtime: the peer exported with torch.onnx.export (dynamic batch), all graph
  optimizations, intra-op threads = the thread count.
Ratios are ONNX Runtime ms / MXNet ms (above 1 = MXNet is faster) and ONNX Runtime / PyTorch.

Every timed call follows a 50 ms pause (a served model between requests). Threads are pinned to
CPUs unless --no-pin: the calling thread to the first CPU, the workers to the others, by
OMP_PROC_BIND=true for the OpenMP runtimes (MXNet with oneDNN and the plugin, PyTorch) and by
session.intra_op_thread_affinities for ONNX Runtime's intra-op pool.
Unpinned, a worker woken after the pause may start on its waker's CPU and share it for
milliseconds (seen on a 2-vCPU VM: a 2-thread batch-1 MobileNetV2 in MXNet 9 ms, pinned 6 ms).

    python benchmarks/inference_peers.py                 # batch 1 and 16, 1 and 2 threads
    python benchmarks/inference_peers.py --quick         # 3 rounds
    python benchmarks/inference_peers.py --threads 1 --batches 1 --networks igcv3
    python benchmarks/inference_peers.py --unpacked      # + the unpacked IGCBlock kernel
    python benchmarks/inference_peers.py --no-pin        # threads left where the OS puts them
"""
import argparse
import os
import sys
import tempfile

import numpy as np

import harness

NETWORKS = ("igcv3", "mobilenetv2")
SIZE, CLASSES = 224, 1000


def inference_module(mx, symbol, batch):
    """`symbol` bound for inference; a graph without SoftmaxOutput's label binds without one."""
    labels = ["softmax_label"] if "softmax_label" in symbol.list_arguments() else []
    module = mx.mod.Module(symbol, context=mx.cpu(), label_names=labels)
    module.bind(data_shapes=[("data", (batch, 3, SIZE, SIZE))],
                label_shapes=[(name, (batch,)) for name in labels] or None, for_training=False)
    return module


def mxnet_forward(mx, symbol, arg_params, aux_params, batch, data):
    module = inference_module(mx, symbol, batch)
    module.set_params(arg_params, aux_params, allow_missing=False)
    batch_data = mx.io.DataBatch([mx.nd.array(data)])

    def forward():
        module.forward(batch_data, is_train=False)
        module.get_outputs()[0].wait_to_read()
    return forward


def mxnet_params(mx, symbol, batch):
    """Xavier-initialised arg/aux params of `symbol` (random weights: only speed is measured)."""
    module = inference_module(mx, symbol, batch)
    mx.random.seed(0)
    module.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    return module.get_params()


def measure(payload):
    """Runs in the child (MXNet only): rows of (network, batch, {variant: seconds}); PyTorch and
    ONNX Runtime run in a peer process (harness.Peer) in turn with MXNet's variants."""
    import mxnet as mx  # (pinned: its OpenMP runtime has put this thread on cpus[0] alone)

    import network
    import utility
    utility.load_ops()
    rows = []
    with harness.Peer(__file__, payload) as peer:
        remote = peer.functions()
        for name in payload["networks"]:
            symbol = network.get_symbol(name, CLASSES)
            for batch in payload["batches"]:
                arg_params, aux_params = mxnet_params(mx, symbol, batch)
                data = input_batch(batch)
                fns = {"MXNet": mxnet_forward(mx, symbol, arg_params, aux_params, batch, data)}
                fns["MXNet optimized"] = mxnet_forward(
                    mx, *network.optimize_for_inference(symbol, arg_params, aux_params), batch,
                    data)
                if payload.get("unpacked"):
                    fns["MXNet unpacked"] = mxnet_forward(
                        mx, *network.optimize_for_inference(symbol, arg_params, aux_params,
                                                            pack_blocks=False), batch, data)
                for runtime in PEER_RUNTIMES:
                    fns[runtime] = remote[peer_key(runtime, name, batch)]
                t = harness.interleaved_medians(fns, rounds=payload["rounds"],
                                                warmup=payload["warmup"], pause=0.05)
                rows.append((name, batch, t))
    return {"rows": rows}


PEER_RUNTIMES = ("PyTorch", "ONNX Runtime")


def peer_key(runtime, name, batch):
    return f"{runtime} {name} {batch}"


def input_batch(batch):
    """The input every runtime gets (the same values in the child and the peer)."""
    return np.random.RandomState(0).uniform(-1, 1, (batch, 3, SIZE, SIZE)).astype(np.float32)


def peer(payload):
    """Runs in the peer process: PyTorch's eval-mode forward and ONNX Runtime's session on the
    peer's ONNX export, per network and batch. With OMP_PROC_BIND, PyTorch's OpenMP runtime
    binds this thread to the first CPU and its workers to the others (MXNet, which the peers
    import for the parameter check, shares it and runs no op here); ONNX Runtime's pool goes to
    the CPUs after the first by intra_op_thread_affinities."""
    import onnxruntime as ort
    import torch

    import peers
    threads = payload["threads"]
    torch.set_num_threads(threads)
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:  # ONNX Runtime reads the file once
        for name in payload["networks"]:
            model = peers.build(name, CLASSES).eval()
            peers.check_param_count(name, model, CLASSES)
            onnx_path = os.path.join(tmp, f"{name}.onnx")
            torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), onnx_path,
                              input_names=["data"], output_names=["logits"],
                              dynamic_axes={"data": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            affinities = harness.ort_affinities(threads, payload["cpus"])
            if payload["pin"] and affinities:
                options.add_session_config_entry("session.intra_op_thread_affinities", affinities)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            for batch in payload["batches"]:
                data = input_batch(batch)
                x = torch.from_numpy(data)

                def torch_forward(model=model, x=x):
                    with torch.no_grad():
                        model(x)
                fns[peer_key("PyTorch", name, batch)] = torch_forward
                fns[peer_key("ONNX Runtime", name, batch)] = (
                    lambda session=session, data=data: session.run(None, {"data": data}))
    return fns, {}


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_threads_flag(parser)
    parser.add_argument("--batches", default="1,16", help="comma-separated (default: 1,16)")
    parser.add_argument("--networks", default=",".join(NETWORKS),
                        help=f"comma-separated, of {', '.join(NETWORKS)}")
    harness.add_rounds_flags(parser, rounds=10, warmup=2, quick=(3, 1), unit="call")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="leave the threads unpinned (default: pinned, see above)")
    parser.add_argument("--unpacked", action="store_true",
                        help="also time the optimized graph with pack_blocks=False (the unpacked "
                             "IGCBlock kernel, with its AVX-512 GEMM)")
    args = parser.parse_args(argv)
    threads = harness.parse_threads(parser, args.threads)
    batches = harness.parse_int_list(parser, "--batches", args.batches)
    networks = args.networks.split(",")
    if any(n not in NETWORKS for n in networks):
        parser.error(f"--networks must be among {', '.join(NETWORKS)}, got {args.networks!r}")
    rounds, warmup = harness.parse_rounds(parser, args)

    cpus = sorted(os.sched_getaffinity(0))
    results = {(name, t): harness.run_child(
        __file__, dict(threads=t, rounds=rounds, warmup=warmup, batches=batches,
                       networks=[name], unpacked=args.unpacked, pin=args.pin, cpus=cpus), t,
        harness.pinned_env(args.pin))
        for name in networks for t in threads}
    harness.print_header(f"Inference, {SIZE}x{SIZE}, median of {rounds} interleaved rounds",
                         "mxnet", "torch", "onnxruntime")
    print("threads: " + ("pinned (OMP_PROC_BIND=true; ONNX Runtime's by "
                         "session.intra_op_thread_affinities)" if args.pin else
                         "not pinned (--no-pin: OMP_PROC_BIND=false)"))
    print()
    first = next(iter(results.values()))
    variants = list(first["rows"][0][2])
    headers = ["network", "batch", "threads"] + [f"{v} ms" for v in variants]
    headers += [f"ORT/{v}" for v in variants if v != "ONNX Runtime"]
    rows = []
    for name in networks:
        for i, batch in enumerate(batches):
            for t in threads:
                seconds = results[name, t]["rows"][i][2]
                ort_s = seconds["ONNX Runtime"]
                rows.append([name, batch, t] + [f"{seconds[v] * 1e3:.1f}" for v in variants] +
                            [harness.ratio(ort_s, seconds[v]) for v in variants
                             if v != "ONNX Runtime"])
    harness.print_table(headers, rows)
    print("ORT/X > 1: X is faster than ONNX Runtime. ONNX Runtime runs the graph exported from the "
          "PyTorch peer.")
    return 0


if __name__ == "__main__":
    sys.exit(harness.main(parent, measure, peer))
