"""What each training-graph rewrite (network.fuse_input_batchnorms) saves: a forward and
backward pass (an executor bound with train_peers.py's family, batch and input size, random
parameters; no optimizer update, which no rewrite touches) on six graphs of the same network,
bound side by side in one process per thread count and run in interleaved rounds (medians; the
order rotates every round):

    none       the network as built (IGC_FUSE_BATCHNORM=0)
    applies    the BatchNormApply read by a 3x3 IGCConv alone moved into it (in_act)
    +pointwise the same into the 1x1 IGCConvs too (their GEMMs read transformed rows)
    +moments   and the BatchNormMoments of every IGCConv's output from the conv (moments)
    +stem      and MXNet's stem Convolution as IGCConv (its BatchNorm then fused as the
               others)
    +pool      and the global average Pooling as the plugin's GlobalAvgPool: the graph that
               training binds

"vs none" is the unfused graph's step time over the variant's (above 1: faster); "wins" counts
the rounds in which the variant was faster than the one above it (the machine's noise moves
single rounds by more than these differences).

    python benchmarks/fusion_ab.py --family mobilenetv2_cifar
    python benchmarks/fusion_ab.py --family igcv3_cifar --threads 2 --rounds 10
"""
import argparse
import statistics
import sys
import time

import train_peers

import harness

VARIANTS = (("none", None),
            ("applies", dict(pointwise=False, moments=False, stem=False, pool=False)),
            ("+pointwise", dict(pointwise=True, moments=False, stem=False, pool=False)),
            ("+moments", dict(pointwise=True, moments=True, stem=False, pool=False)),
            ("+stem", dict(pointwise=True, moments=True, stem=True, pool=False)),
            ("+pool", dict(pointwise=True, moments=True, stem=True, pool=True)))


def measure(payload):
    """Runs in the child: every variant's step times (ms) over the rounds, rotating the order."""
    import mxnet as mx
    import numpy as np

    import network
    import utility
    utility.load_ops()
    _, name, config, (images, side, classes) = train_peers.FAMILIES[payload["family"]]
    images = payload["batch"] or images
    symbol = network.get_symbol(name, classes, **config)
    steps = {}
    for label, options in VARIANTS:
        graph = symbol if options is None else network.fuse_input_batchnorms(symbol, **options)
        exe = graph.simple_bind(mx.cpu(), grad_req="write", data=(images, 3, side, side),
                                softmax_label=(images,))
        rng = np.random.RandomState(0)
        for key, array in sorted(exe.arg_dict.items()):
            array[:] = (rng.randint(0, classes, array.shape) if key == "softmax_label"
                        else rng.uniform(-1, 1, array.shape) * 0.3)
        for key, array in exe.aux_dict.items():
            array[:] = 1 if key.endswith("var") else 0

        def step(exe=exe):
            exe.forward(is_train=True)
            exe.backward()
            mx.nd.waitall()
        steps[label] = step
    for step in steps.values():
        step()
        step()
    times = {label: [] for label in steps}
    labels = list(steps)
    for r in range(payload["rounds"]):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            t0 = time.perf_counter()
            steps[label]()
            times[label].append((time.perf_counter() - t0) * 1e3)
    return dict(batch=images, times=times)


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = train_peers.add_family_flags(parser)
    harness.add_threads_flag(parser)
    parser.add_argument("--rounds", type=int, default=16,
                        help="interleaved rounds, one step of each variant each (default: 16)")
    args = parser.parse_args(argv)
    threads = harness.parse_threads(parser, args.threads)
    if args.rounds < 1 or args.batch < 0:
        parser.error(f"--rounds must be >= 1 and --batch >= 0, got {args.rounds}, {args.batch}")
    family = names.index(args.family)
    harness.print_header(f"Training-graph rewrites of {args.family}: step ms, "
                         f"median of {args.rounds} interleaved rounds", "mxnet")
    for t in threads:
        result = harness.run_child(__file__, dict(family=family, rounds=args.rounds,
                                                  batch=args.batch), t)
        times = result["times"]
        medians = {label: statistics.median(v) for label, v in times.items()}
        rows, previous = [], None
        for label, _ in VARIANTS:
            wins = ("-" if previous is None else
                    f"{sum(a < b for a, b in zip(times[label], times[previous]))}/{args.rounds}")
            rows.append([label, f"{medians[label]:.1f}",
                         harness.ratio(medians["none"], medians[label]), wins])
            previous = label
        print(f"{t} thread(s), batch {result['batch']}")
        harness.print_table(["graph", "step ms", "vs none", "wins vs above"], rows)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(harness.main(parent, measure))
