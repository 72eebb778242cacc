#!/usr/bin/env python3
"""Benchmark of IGC's primary convolution: the native `IGCConv` vs MXNet's Convolution + Reorder.

Prints one table: for each case and thread count, the median wall time of conv_impl='mxnet' and
conv_impl='igc' measured in the same process, the two variants interleaved and repeated, and the
speedup (mxnet / igc). Cases:
- primary: the IGC unit's primary 3x3 group conv (L=24 groups) + permutation at the CIFAR shapes
  of plain_igc d38 L24M2, batch 64: forward (inference) and forward+backward;
- depthwise: IGCV3's 3x3 depthwise conv at ImageNet shapes, batch 32, forward (inference);
- step: one training step (forward, backward, SGD update) of plain_igc d38 L24M2 and
  resnet_igc d20 L24M2, batch 64, 32x32; IGCV3 inference, batch 32, 224x224.
Each thread count runs in its own process (harness.py). Then, as evidence of where the time
goes, the oneDNN primitives that take the most time in one step of each network variant
(DNNL_VERBOSE=1, 1 thread).

    python benchmarks/conv.py                     # everything, 1 and 2 threads (~4 minutes)
    python benchmarks/conv.py --quick             # primary and depthwise cases only
    python benchmarks/conv.py --threads 1 --reps 5 --no-verbose
"""
import argparse
import collections
import sys

import numpy as np

import harness

# (input shape, num_filter, groups, stride): the primary convs of plain_igc d38 L24M2.
PRIMARY = [
    ((64, 48, 32, 32), 48, 24, 1),
    ((64, 48, 32, 32), 96, 24, 2),
    ((64, 96, 16, 16), 96, 24, 1),
    ((64, 96, 16, 16), 192, 24, 2),
    ((64, 192, 8, 8), 192, 24, 1),
]
# IGCV3's depthwise convs (input shape, stride), batch 32.
DEPTHWISE = [
    ((32, 96, 112, 112), 2),
    ((32, 144, 56, 56), 1),
    ((32, 192, 28, 28), 1),
    ((32, 384, 14, 14), 1),
    ((32, 960, 7, 7), 1),
]
# (label, network name, config, batch, input size, training step?)
NETWORKS = [
    ("plain_igc d38 L24M2 train step", "plain_igc",
     dict(depth=38, primary_partition=24, secondary_partition=2), 64, 32, True),
    ("resnet_igc d20 L24M2 train step", "resnet_igc",
     dict(depth=20, primary_partition=24, secondary_partition=2), 64, 32, True),
    ("igcv3 inference", "igcv3", dict(), 32, 224, False),
]
IMPLS = ("mxnet", "igc")

# Targets from the issue (speedup of 'igc' over 'mxnet').
TARGETS = {"primary fwd+bwd": 4.0, "plain_igc d38 L24M2 train step": 2.5, "igcv3 inference": 1.0,
           "igcv3 inference (same graph)": 1.0}


def primary_symbol(mx, impl, num_filter, groups, stride, interleave=True):
    data, weight = mx.sym.var("data"), mx.sym.var("conv_weight")
    attrs = dict(num_filter=num_filter, kernel=(3, 3), stride=(stride, stride), pad=(1, 1),
                 num_group=groups, no_bias=True, name="conv")
    if impl == "igc":
        return mx.sym.IGCConv(data, weight, interleave=interleave, **attrs)
    out = mx.sym.Convolution(data, weight, **attrs)
    return mx.sym.Reorder(out, branch_factor=groups) if interleave else out


def op_timers(mx, sym, shape, train):
    exe = sym.simple_bind(mx.cpu(), data=shape, grad_req="write" if train else "null")
    rng = np.random.RandomState(0)
    for arr in exe.arg_dict.values():
        arr[:] = rng.uniform(-1, 1, arr.shape)
    out_grad = mx.nd.ones(exe.outputs[0].shape)

    def forward():
        exe.forward(is_train=False)[0].wait_to_read()

    def forward_backward():
        exe.forward(is_train=True)
        exe.backward(out_grad)
        mx.nd.waitall()

    return forward_backward if train else forward


def network_symbol(name, config, impl, size):
    import network
    return network.get_symbol(name, num_classes=1000 if size == 224 else 10, conv_impl=impl,
                              **config)


def network_timer(mx, sym, batch, size, train):
    mod = mx.mod.Module(sym, context=mx.cpu())
    mod.bind(data_shapes=[("data", (batch, 3, size, size))],
             label_shapes=[("softmax_label", (batch,))], for_training=train)
    mod.init_params(mx.init.Xavier(magnitude=2))
    if train:
        mod.init_optimizer(optimizer="sgd", optimizer_params=dict(learning_rate=0.01,
                                                                  momentum=0.9))
    rng = np.random.RandomState(0)
    batch_data = mx.io.DataBatch([mx.nd.array(rng.uniform(-1, 1, (batch, 3, size, size)))],
                                 [mx.nd.array(rng.randint(0, 10, batch))])

    def step():
        if train:
            mod.forward_backward(batch_data)
            mod.update()
        else:
            mod.forward(batch_data, is_train=False)
        mx.nd.waitall()

    return step


def child(payload):
    """Runs in the child process: `measure` rows, or the `dnnl_profile` log on stdout."""
    if payload["what"] == "profile":
        return dnnl_profile(payload["network_index"], payload["impl"])
    return measure(payload["quick"], payload["reps"])


def measure(quick, reps):
    """Rows of (case, mxnet seconds, igc seconds)."""
    import mxnet as mx

    import utility
    utility.load_ops()
    rows = []
    for shape, num_filter, groups, stride in PRIMARY:
        label = f"primary {shape[1]}->{num_filter} {shape[2]}x{shape[3]} /{stride}"
        for train, what in ((False, "fwd"), (True, "fwd+bwd")):
            fns = {impl: op_timers(mx, primary_symbol(mx, impl, num_filter, groups, stride),
                                   shape, train) for impl in IMPLS}
            t = harness.interleaved_medians(fns, max(reps, 5))
            rows.append((f"{label} {what}", t["mxnet"], t["igc"]))
    for shape, stride in DEPTHWISE:
        channels = shape[1]
        fns = {impl: op_timers(mx, primary_symbol(mx, impl, channels, channels, stride, False),
                               shape, False) for impl in IMPLS}
        t = harness.interleaved_medians(fns, max(reps, 5))
        rows.append((f"depthwise {channels} {shape[2]}x{shape[3]} /{stride} fwd", t["mxnet"],
                     t["igc"]))
    if not quick:
        for label, name, config, batch, size, train in NETWORKS:
            symbols = {impl: network_symbol(name, config, impl, size) for impl in IMPLS}
            if symbols["mxnet"].tojson() == symbols["igc"].tojson():
                label += " (same graph)"  # the builder has no IGCConv for this network
            fns = {impl: network_timer(mx, sym, batch, size, train)
                   for impl, sym in symbols.items()}
            t = harness.interleaved_medians(fns, reps)
            rows.append((label, t["mxnet"], t["igc"]))
    return rows


def dnnl_profile(index, impl):
    """Runs in the child process: one step of NETWORKS[index] after a warm-up step, with oneDNN's
    verbose log going to stdout after a marker line."""
    import mxnet as mx

    import utility
    utility.load_ops()
    label, name, config, batch, size, train = NETWORKS[index]
    step = network_timer(mx, network_symbol(name, config, impl, size), batch, size, train)
    step()
    sys.stdout.flush()
    print("=== measured step ===", flush=True)
    step()
    sys.stdout.flush()


def top_primitives(log, count=6):
    """(kind, implementation) -> [total ms, calls], from the exec lines after the marker."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    lines = log.split("=== measured step ===", 1)[-1].splitlines()
    for line in lines:
        fields = line.split(",")
        if len(fields) < 6 or not fields[0].startswith("dnnl_verbose") or fields[1] != "exec":
            continue
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        key = (fields[3], fields[4], fields[5])
        totals[key][0] += ms
        totals[key][1] += 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
    return ranked[:count], sum(v[0] for v in totals.values())


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_threads_flag(parser)
    parser.add_argument("--reps", type=int, default=3,
                        help="timed rounds of each variant (at least 5 for single ops)")
    parser.add_argument("--quick", action="store_true", help="single ops only, no networks")
    parser.add_argument("--no-verbose", action="store_true",
                        help="skip the DNNL_VERBOSE profile of the network steps")
    args = parser.parse_args(argv)
    threads = harness.parse_threads(parser, args.threads)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")

    results = harness.per_thread(__file__, dict(what="measure", quick=args.quick, reps=args.reps),
                                 threads)
    harness.print_header("IGCConv vs Convolution + Reorder (conv_impl igc vs mxnet)", "mxnet")
    rows = []
    for i, (label, _, _) in enumerate(results[threads[0]]):
        for t in threads:
            _, mx_s, igc_s = results[t][i]
            rows.append([label, t, f"{mx_s * 1e3:.2f}", f"{igc_s * 1e3:.2f}",
                         harness.ratio(mx_s, igc_s)])
    harness.print_table(["case", "threads", "mxnet ms", "igc ms", "speedup"], rows)
    print_targets(results)
    if not args.quick and not args.no_verbose:
        print("\nTop oneDNN primitives in one step (DNNL_VERBOSE=1, 1 thread; "
              "IGCConv/Reorder are not oneDNN ops and do not appear):")
        for index, (label, *_rest) in enumerate(NETWORKS):
            for impl in IMPLS:
                log = harness.child_output(__file__, dict(what="profile", network_index=index,
                                                          impl=impl), 1, {"DNNL_VERBOSE": "1"})
                ranked, total = top_primitives(log)
                print(f"  {label}, conv_impl={impl}: oneDNN total {total:.0f} ms")
                for (kind, impl_name, prop), (ms, calls) in ranked:
                    print(f"    {ms:>9.1f} ms {calls:>5} calls  {kind} {impl_name} {prop}")


def print_targets(results):
    """Speedup against the issue's targets, per thread count (primary: the geometric mean over
    the five CIFAR shapes above)."""
    print()
    for t, rows in results.items():
        ratios = {label: mx_s / igc_s for label, mx_s, igc_s in rows}
        primary = [r for label, r in ratios.items() if label.startswith("primary")
                   and label.endswith("fwd+bwd")]
        found = {"primary fwd+bwd": float(np.exp(np.mean(np.log(primary))))} if primary else {}
        for label in TARGETS:
            if label in ratios:
                found[label] = ratios[label]
        for label, ratio in found.items():
            verdict = "met" if ratio >= TARGETS[label] else "NOT met"
            if label.endswith("(same graph)"):
                verdict = "the graphs are identical: the difference is noise"
            print(f"target {label} >= {TARGETS[label]:.1f}x, {t} thread(s): {ratio:.2f}x "
                  f"({verdict})")
        if len(results) > 1 and t == max(results):
            one = dict((label, igc_s) for label, _, igc_s in results[min(results)])
            step = "plain_igc d38 L24M2 train step"
            if step in one:
                igc_step = dict((label, igc_s) for label, _, igc_s in rows)[step]
                print(f"plain_igc step with conv_impl='igc': {min(results)} thread(s) "
                      f"{one[step]:.2f} s, {t} threads {igc_step:.2f} s")


if __name__ == "__main__":
    sys.exit(harness.main(parent, child))
