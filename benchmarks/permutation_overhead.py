"""Training speed of plain_igc with each channel permutation, measured in one run.

    python benchmarks/permutation_overhead.py           # plain_igc d38 L24 M2, batch 64, CPU
    python benchmarks/permutation_overhead.py --threads 1 --rounds 3 --steps 2

Variants: the native `Reorder` op, the pure-symbol reshape -> swapaxes -> reshape, Reorder with
branch_factor=1 (a copy through the same plugin boundary, which also makes MXNet convert oneDNN's
blocked layouts to plain NCHW and back), and `none`:
the same graph with every permutation node bypassed (its consumers read its input) and every
fused IGCConv permutation switched off (interleave=False), the floor.
`none` computes a different function but costs exactly the convolutions, BN and the rest, so
(step - floor step) / step is the share of a training step spent permuting. A step is forward +
backward + Nesterov update on synthetic data (no data loading). Variants run interleaved in
rounds and each reports its median round, so drift on a shared machine hits them alike; each
thread count runs in its own process (harness.py).
"""
import argparse
import json
import sys

import mxnet as mx
import numpy as np

import harness
import network
import utility


def without_permutations(symbol):
    """`symbol` with every Reorder node bypassed (each consumer reads the Reorder's input) and
    every fused IGCConv permutation switched off (interleave=False)."""
    graph = json.loads(symbol.tojson())
    nodes = graph["nodes"]
    bypass = {i: node["inputs"][0] for i, node in enumerate(nodes) if node["op"] == "Reorder"}
    fused = [node for node in nodes if node["op"] == "IGCConv"]
    if not bypass and not fused:
        raise ValueError("the symbol has no permutation to remove")
    for node in fused:
        node["attrs"]["interleave"] = "False"

    def resolve(entry):
        while entry[0] in bypass:
            entry = bypass[entry[0]]
        return entry

    for node in nodes:
        node["inputs"] = [resolve(e) for e in node["inputs"]]
    graph["heads"] = [resolve(e) for e in graph["heads"]]
    # Bypassed nodes are unreachable from the heads, so loading drops them.
    return mx.sym.load_json(json.dumps(graph))


def with_identity_permutations(symbol):
    """`symbol` with every Reorder turned into Reorder(branch_factor=1), a plain copy through the
    same plugin boundary: what remains of the overhead without the permutation's access pattern."""
    graph = json.loads(symbol.tojson())
    for node in graph["nodes"]:
        if node["op"] == "Reorder":
            node["attrs"]["branch_factor"] = "1"
    return mx.sym.load_json(json.dumps(graph))


def variants(args):
    config = dict(depth=args["depth"], primary_partition=args["primary_partition"],
                  secondary_partition=args["secondary_partition"], conv_impl=args["conv_impl"])
    reorder = network.get_symbol("plain_igc", 10, permutation="reorder", **config)
    return {"Reorder": reorder,
            "reshape-swapaxes-reshape": network.get_symbol("plain_igc", 10,
                                                           permutation="reshape", **config),
            "Reorder(1), a plain copy": with_identity_permutations(reorder),
            "none (floor)": without_permutations(reorder)}


def make_trainer(symbol, batch_size, ctx):
    module = mx.mod.Module(symbol, context=ctx)
    module.bind(data_shapes=[("data", (batch_size, 3, 32, 32))],
                label_shapes=[("softmax_label", (batch_size,))])
    mx.random.seed(0)
    module.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    module.init_optimizer(optimizer="nag", optimizer_params=dict(learning_rate=0.01,
                                                                  momentum=0.9, wd=1e-4))
    rng = np.random.RandomState(0)
    batch = mx.io.DataBatch([mx.nd.array(rng.randn(batch_size, 3, 32, 32), ctx=ctx)],
                            [mx.nd.array(rng.randint(0, 10, batch_size), ctx=ctx)])

    def steps(n):
        for _ in range(n):
            module.forward_backward(batch)
            module.update()
        mx.nd.waitall()
    return steps


def measure(args):
    """Runs in the child process: {variant: median seconds per step}."""
    utility.load_ops()
    ctx = mx.cpu()
    trainers = {name: make_trainer(sym, args["batch_size"], ctx)
                for name, sym in variants(args).items()}
    for steps in trainers.values():
        steps(args["warmup"])
    rounds = harness.interleaved_medians(
        {name: (lambda steps=steps: steps(args["steps"])) for name, steps in trainers.items()},
        rounds=args["rounds"], warmup=0)
    return {name: seconds / args["steps"] for name, seconds in rounds.items()}


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=38)
    parser.add_argument("--primary-partition", type=int, default=24)
    parser.add_argument("--secondary-partition", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--conv-impl", default="mxnet",
                        help="convolution implementation of the IGC units (mxnet, igc, auto); "
                             "with igc both permutations of a unit are fused into IGCConv and the "
                             "floor runs IGCConv with interleave=False")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    harness.add_threads_flag(parser)
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds x 1 step after 1 warm-up step")
    args = parser.parse_args(argv)
    threads = harness.parse_threads(parser, args.threads)
    if args.quick:
        args = argparse.Namespace(**{**vars(args), "rounds": 3, "steps": 1, "warmup": 1})
    for key in ("steps", "rounds", "batch_size"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")

    payload = {key: value for key, value in vars(args).items() if key not in ("threads", "quick")}
    results = harness.per_thread(__file__, payload, threads)
    harness.print_header(
        f"Permutation overhead: plain_igc depth {args.depth}, L={args.primary_partition}, "
        f"M={args.secondary_partition}, conv_impl {args.conv_impl}, batch {args.batch_size}, "
        f"{args.rounds} rounds x {args.steps} steps, median round", "mxnet")
    rows = []
    for t, step in results.items():
        floor = step["none (floor)"]
        for name, seconds in step.items():
            rows.append([name, t, f"{args.batch_size / seconds:.1f}", f"{1000 * seconds:.1f}",
                         f"{100.0 * (seconds - floor) / seconds:.1f}%"])
    harness.print_table(["permutation", "threads", "images/s", "step ms", "overhead"], rows)
    print("overhead = (step - floor step) / step; the target for Reorder is <= 3%")
    return 0


if __name__ == "__main__":
    sys.exit(harness.main(parent, measure))
