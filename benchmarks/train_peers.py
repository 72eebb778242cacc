"""Training step of the project's networks vs their PyTorch peers, interleaved in one run.

A step is forward + backward + SGD update (momentum 0.9, weight decay 1e-4) of one synthetic
batch (no data loading; CIFAR rows: 64 images, 32x32, 10 classes; ImageNet rows: 16 images,
224x224, 1000 classes): the project as an MXNet `Module` with the
builders' defaults (conv_impl='auto', the native Reorder), PyTorch as the peer in benchmarks/peers
(train mode, cross-entropy loss). Before any timing each peer is checked to have exactly the MXNet
graph's parameter count. Per family, one child process (so that MXNet's memory pool does not
carry one network's buffers into the next) runs the project's step and PyTorch's on every thread
count in turn (harness.py: medians of interleaved rounds): the project's on the first count in the
child itself, on each other count in an MXNet process beside it, PyTorch's in a process of its own
per count (harness.Peer: no two frameworks or thread counts share an OpenMP runtime, as in a
user's process); ratio = PyTorch ms / project ms, above 1 = the project is faster. With more than
one thread count, each step's time on the first count against its time on the others (timed in
the same rounds) is printed too, beside the same ratio for one
memory-bound pass: the plugin's BatchNormApply (ReLU6) over the largest tensor of a
`mobilenetv2_cifar` step (64 x 144 x 32 x 32, 38 MB in and 38 MB out), on the same threads in a
child of its own: what the BatchNorm's passes can gain from more threads on this machine.

    python benchmarks/train_peers.py                       # 1 and 2 threads, 5 rounds
    python benchmarks/train_peers.py --quick               # 3 rounds, one warm-up step
    python benchmarks/train_peers.py --threads 1 --families igcv3_cifar
    python benchmarks/train_peers.py --families igcv3,mobilenetv2,resnet_igc_imgnet_d18
"""
import argparse
import contextlib
import sys

import numpy as np

import harness

CIFAR, IMAGENET = (64, 32, 10), (16, 224, 1000)  # batch, image side, classes
# label, network name, config, (batch, side, classes).
FAMILIES = [
    ("plain_igc d38 L24M2", "plain_igc", dict(depth=38, primary_partition=24,
                                              secondary_partition=2), CIFAR),
    ("resnet_igc d38 L24M2", "resnet_igc", dict(depth=38, primary_partition=24,
                                                secondary_partition=2), CIFAR),
    ("igcv3_cifar 1.0", "igcv3_cifar", dict(depth_multiplier=1.0), CIFAR),
    ("mobilenetv2_cifar", "mobilenetv2_cifar", dict(), CIFAR),
    ("igcv3 (IGCV3-D) 224", "igcv3", dict(), IMAGENET),
    ("mobilenetv2 224", "mobilenetv2", dict(), IMAGENET),
    ("resnet_igc_imgnet_d18 L100M2 224", "resnet_igc_imgnet_d18", dict(), IMAGENET),
]
LR, MOMENTUM, WD = 0.01, 0.9, 1e-4
MEMORY_SHAPE = (64, 144, 32, 32)  # the largest tensor of a mobilenetv2_cifar step (38 MB)


def add_family_flags(parser):
    """--family (a row of FAMILIES, by name) and --batch (0: that row's) for the scripts that
    time one family's step (profile_step.py, fusion_ab.py); returns the names in row order."""
    names = [row[1] for row in FAMILIES]
    parser.add_argument("--family", required=True, choices=names,
                        help="network, as in train_peers.py")
    parser.add_argument("--batch", type=int, default=0,
                        help="images per step (default: train_peers.py's)")
    return names


def mxnet_step(name, config, shape):
    import mxnet as mx

    import network
    from training.optim import make_optimizer
    images, side, classes = shape
    symbol = network.fuse_input_batchnorms(network.get_symbol(name, classes, **config))
    module = mx.mod.Module(symbol, context=mx.cpu())
    module.bind(data_shapes=[("data", (images, 3, side, side))],
                label_shapes=[("softmax_label", (images,))])
    mx.random.seed(0)
    module.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    # The training loop's SGD (training/optim.py: MXNet's update in one call over all the arrays,
    # weight decay on every weight, bias, gamma and beta, as the PyTorch peer's).
    names = [n for n in symbol.list_arguments() if n not in ("data", "softmax_label")]
    module.init_optimizer(optimizer=make_optimizer("sgd", names, learning_rate=LR,
                                                   momentum=MOMENTUM, wd=WD,
                                                   rescale_grad=1.0 / images))
    rng = np.random.RandomState(0)
    batch = mx.io.DataBatch([mx.nd.array(rng.uniform(-1, 1, (images, 3, side, side)))],
                            [mx.nd.array(rng.randint(0, classes, images))])

    def step():
        module.forward_backward(batch)
        module.update()
        mx.nd.waitall()
    return step


def torch_step(name, config, shape):
    import torch

    import peers
    images, side, classes = shape
    model = peers.build(name, classes, **config)
    peers.check_param_count(name, model, classes, **config)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((images, 3, side, side), generator=gen) * 2 - 1
    y = torch.randint(0, classes, (images,), generator=gen)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return step


def memory_pass_seconds(rounds):
    """Median seconds of one BatchNormApply (ReLU6) over a MEMORY_SHAPE tensor (a read and a
    write pass, at memory speed) on this process's threads."""
    import mxnet as mx

    import utility
    utility.load_ops()
    channels = MEMORY_SHAPE[1]
    x, y = mx.nd.ones(MEMORY_SHAPE), mx.nd.zeros(MEMORY_SHAPE)
    stats = [mx.nd.ones(channels), mx.nd.zeros(channels), mx.nd.zeros(channels),
             mx.nd.ones(channels)]  # gamma, beta, mean, invstd

    def apply():
        mx.nd.BatchNormApply(x, *stats, act="relu6", out=y)
        y.wait_to_read()
    return harness.interleaved_medians({"apply": apply}, rounds=rounds, warmup=1)["apply"]


def measure(payload):
    """Runs in the child (MXNet only), on the first of payload["threads"]: (params, [[threads,
    project seconds, PyTorch seconds], ...]) of one family. The project's step on the child's
    threads runs here, on each other count in an MXNet peer process of its own, PyTorch's on
    each count in a peer (harness.Peer); all of them in turn in the same interleaved rounds, so
    that each ratio, the thread counts' against each other too, compares steps timed within the
    same seconds. For a payload with "memory", the seconds of the memory-bound pass."""
    if payload.get("memory"):
        return memory_pass_seconds(payload["rounds"])
    import utility
    utility.load_ops()
    _, name, config, shape = FAMILIES[payload["family"]]
    threads = payload["threads"]
    with contextlib.ExitStack() as stack:
        fns, params = {f"project {threads[0]}": mxnet_step(name, config, shape)}, None
        for t in threads:
            for framework in ("pytorch", "project") if t != threads[0] else ("pytorch",):
                peer = stack.enter_context(harness.Peer(__file__, dict(
                    family=payload["family"], threads=t, framework=framework), threads=t))
                fns[f"{framework} {t}"] = peer.functions()[framework]
                params = params or peer.info.get("params")
        times = harness.interleaved_medians(fns, rounds=payload["rounds"],
                                            warmup=payload["warmup"], pause=0.05)
    return params, [[t, times[f"project {t}"], times[f"pytorch {t}"]] for t in threads]


def peer(payload):
    """Runs in a peer process on payload["threads"]: the PyTorch step, with the parameter count
    both graphs have; or (framework "project") the project's MXNet step."""
    _, name, config, shape = FAMILIES[payload["family"]]
    if payload["framework"] == "project":
        import utility
        utility.serial_caller()
        utility.load_ops()
        return {"project": mxnet_step(name, config, shape)}, {}
    import torch
    torch.set_num_threads(payload["threads"])
    import peers
    params = peers.mxnet_param_count(name, shape[2], **config)
    return {"pytorch": torch_step(name, config, shape)}, {"params": params}


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_threads_flag(parser)
    harness.add_rounds_flags(parser, rounds=5, warmup=2, quick=(3, 1), unit="step")
    parser.add_argument("--families", default=",".join(row[1] for row in FAMILIES),
                        help="comma-separated network names (default: all seven)")
    args = parser.parse_args(argv)
    threads = harness.parse_threads(parser, args.threads)
    index = {row[1]: i for i, row in enumerate(FAMILIES)}
    wanted = args.families.split(",")
    unknown = [n for n in wanted if n not in index]
    if unknown:
        parser.error(f"--families: unknown {unknown}; valid: {', '.join(index)}")
    rounds, warmup = harness.parse_rounds(parser, args)

    scaling = len(threads) > 1
    rows = []
    for name in wanted:
        label, _, _, (batch, side, _) = FAMILIES[index[name]]
        params, times = harness.run_child(
            __file__, dict(threads=threads, rounds=rounds, warmup=warmup, family=index[name]),
            threads[0])
        for t, ours, peer in times:
            row = [label, f"{params:,}", f"{batch}x{side}²", t, f"{ours * 1e3:.0f}",
                   f"{peer * 1e3:.0f}", harness.ratio(peer, ours)]
            if scaling:
                row += [harness.ratio(times[0][1], ours), harness.ratio(times[0][2], peer)]
            rows.append(row)
    memory = harness.per_thread(__file__, dict(rounds=2 * rounds, memory=True),
                                threads) if scaling else {}
    harness.print_header("Training step (fwd + bwd + SGD), synthetic data; median of "
                         f"{rounds} interleaved rounds", "mxnet", "torch")
    headers = ["network", "params", "batch", "threads", "project ms", "PyTorch ms",
               "PyTorch/project"]
    if scaling:
        headers += [f"project vs {threads[0]} thread(s)", f"PyTorch vs {threads[0]} thread(s)"]
    harness.print_table(headers, rows)
    print("PyTorch/project > 1: the project's step is faster. Parameter counts are checked equal.")
    if scaling:
        base = memory[threads[0]]
        moved = 2 * 4 * int(np.prod(MEMORY_SHAPE))  # bytes read and written
        print("One memory-bound pass (BatchNormApply, ReLU6, "
              f"{'x'.join(map(str, MEMORY_SHAPE))}): " + ", ".join(
                  f"{t} thread(s) {memory[t] * 1e3:.2f} ms ({moved / memory[t] / 1e9:.1f} GB/s"
                  + (f", {harness.ratio(base, memory[t])} vs {threads[0]})" if t != threads[0]
                     else ")") for t in threads))
        print("(what the BatchNorm's passes, at memory speed, can gain from more threads here)")
    return 0


if __name__ == "__main__":
    sys.exit(harness.main(parent, measure, peer))
