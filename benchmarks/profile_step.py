"""Where a training step's time goes: every convolution layer's forward and backward, and every op
type, from MXNet's profiler.

The step is train_peers.py's (the project's `Module`, synthetic batch, SGD update), run in a child
process per thread count with `MXNET_EXEC_BULK_EXEC_TRAIN=0` (so that each op is its own profiler
event) after warm-up steps; times are means over the profiled steps. A layer's events are matched
to the graph's `IGCConv` / `Convolution` nodes in order: the k-th forward event of a step is the
k-th such node of the graph, the k-th backward event the k-th from the end (the networks here are
chains, run by one engine worker; the script stops if the event counts do not match the nodes).
GMAC/s: forward multiply-adds / forward time, twice that (data and weight gradient) / backward
time. Profiling adds its own cost, so the sums run above train_peers.py's step.

    python benchmarks/profile_step.py --family mobilenetv2_cifar
    python benchmarks/profile_step.py --family igcv3_cifar --threads 2 --steps 3
"""
import argparse
import collections
import json
import os
import sys
import tempfile

import train_peers

import harness

CONV_OPS = ("IGCConv", "Convolution")


def conv_layers(symbol, data_shape):
    """[(op, name, input shape, output shape, kernel, groups, multiply-adds)] in graph order."""
    from network.graph.view import Graph, int_tuple
    graph = Graph(symbol, data_shape)
    layers = []
    for i, node in enumerate(graph.nodes):
        if node["op"] not in CONV_OPS:
            continue
        kernel = int_tuple(graph.attrs(i)["kernel"])
        groups = int(graph.attrs(i).get("num_group", 1))
        src, dst = graph.shape(node["inputs"][0][0]), graph.shape(i)
        macs = dst[0] * dst[1] * dst[2] * dst[3] * (src[1] // groups) * kernel[0] * kernel[1]
        layers.append((node["op"], node["name"], src, dst, kernel, groups, macs))
    return layers


def durations(trace_file):
    """{event name: [microseconds, ...]} of the operator events, in start order."""
    with open(trace_file) as f:
        events = json.load(f)["traceEvents"]
    events = sorted((e for e in events if e.get("ph") in ("B", "E")), key=lambda e: e["ts"])
    begun, spans = {}, collections.defaultdict(list)
    for e in events:
        key = (e["name"], e.get("tid"))
        if e["ph"] == "B":
            begun[key] = e["ts"]
        elif key in begun:
            spans[e["name"]].append(e["ts"] - begun.pop(key))
    return spans


def measure(payload):
    """Runs in the child: per-layer forward/backward ms and per-op-type ms per step."""
    import mxnet as mx

    import network
    import utility
    utility.load_ops()
    _, name, config, shape = train_peers.FAMILIES[payload["family"]]
    batch, side, classes = shape
    batch = payload["batch"] or batch
    step = train_peers.mxnet_step(name, config, (batch, side, classes))
    for _ in range(payload["warmup"]):
        step()
    symbol = network.get_symbol(name, classes, **config)
    # Each conv's op in the graph the step binds (train_peers.mxnet_step: the stem of a CIFAR
    # network is an IGCConv there), its shapes from the graph as built (the same).
    bound = {n["name"]: n["op"]
             for n in json.loads(network.fuse_input_batchnorms(symbol).tojson())["nodes"]}
    layers = [(bound[layer[1]],) + layer[1:]
              for layer in conv_layers(symbol, (batch, 3, side, side))]
    steps = payload["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        mx.profiler.set_config(profile_all=True, filename=trace)
        mx.profiler.set_state("run")
        for _ in range(steps):
            step()
        mx.profiler.set_state("stop")
        mx.profiler.dump()
        spans = durations(trace)
    rows = []
    for op in CONV_OPS:
        of_op = [layer for layer in layers if layer[0] == op]
        forward, backward = spans.get(op, []), spans.get("_backward_" + op, [])
        if len(forward) != steps * len(of_op) or len(backward) != steps * len(of_op):
            raise SystemExit(f"profile_step: {len(forward)} {op} and {len(backward)} backward "
                             f"events in {steps} steps for {len(of_op)} nodes; cannot match")
        count = len(of_op)
        for i, layer in enumerate(of_op):
            fwd = sum(forward[s * count + i] for s in range(steps)) / steps / 1e3
            bwd = sum(backward[s * count + count - 1 - i] for s in range(steps)) / steps / 1e3
            rows.append(list(layer[1:]) + [fwd, bwd])
    order = {layer[1]: i for i, layer in enumerate(layers)}
    rows.sort(key=lambda r: order[r[0]])
    totals = {k: sum(v) / steps / 1e3 for k, v in spans.items()}
    return dict(batch=batch, layers=rows, totals=totals)


def gmacs(macs, ms):
    return f"{macs / ms / 1e6:.1f}" if ms > 0 else "-"


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = train_peers.add_family_flags(parser)
    harness.add_threads_flag(parser, default="1")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps (default: 2)")
    parser.add_argument("--top", type=int, default=12,
                        help="op types listed, most time first (default: 12)")
    args = parser.parse_args(argv)
    threads = harness.parse_threads(parser, args.threads)
    if args.steps < 1 or args.warmup < 0 or args.batch < 0 or args.top < 1:
        parser.error(f"--steps and --top must be >= 1, --warmup and --batch >= 0, got "
                     f"{args.steps}, {args.top}, {args.warmup}, {args.batch}")
    family = names.index(args.family)
    harness.print_header(f"Training step profile of {args.family} (MXNet profiler, mean of "
                         f"{args.steps} steps after {args.warmup})", "mxnet")
    for t in threads:
        result = harness.run_child(
            __file__, dict(family=family, steps=args.steps, warmup=args.warmup,
                           batch=args.batch), t, {"MXNET_EXEC_BULK_EXEC_TRAIN": "0"})
        print(f"{t} thread(s), batch {result['batch']}")
        rows = []
        for name, src, dst, kernel, groups, macs, fwd, bwd in result["layers"]:
            rows.append([name, "x".join(map(str, src)), "x".join(map(str, dst)),
                         "x".join(map(str, kernel)), groups, f"{macs / 1e6:.0f}", f"{fwd:.2f}",
                         gmacs(macs, fwd), f"{bwd:.2f}", gmacs(2 * macs, bwd)])
        harness.print_table(["layer", "input", "output", "kernel", "groups", "MMAC", "fwd ms",
                             "fwd GMAC/s", "bwd ms", "bwd GMAC/s"], rows)
        print()
        totals = sorted(result["totals"].items(), key=lambda kv: -kv[1])
        harness.print_table(["op", "ms per step"],
                            [[k, f"{v:.1f}"] for k, v in totals[:args.top]])
        print(f"all ops: {sum(result['totals'].values()):.1f} ms per step\n")
    return 0


if __name__ == "__main__":
    sys.exit(harness.main(parent, measure))
