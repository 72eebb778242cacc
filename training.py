"""What train_model.py and train_imagenet.py share: flags, checks, data, optimiser, the loop.

The entry points parse their flags (dataset and network presets become argparse defaults before
the final parse), turn them into a frozen `Job` with `resolve_job` (every user mistake surfaces
here as a `ConfigError` naming the flag or file, before any training), and hand it to `fit`.
"""
import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import struct
import sys
import time

import mxnet as mx
import numpy as np

import network
import utility

LOGGER = logging.getLogger("igc.train")

# The authors decay every learnable array: MXNet's default rule would skip biases and betas.
DECAYED_SUFFIXES = ("_weight", "_bias", "_gamma", "_beta")
DIST_KV_STORES = ("dist_sync", "dist_device_sync", "dist_async")


class ConfigError(ValueError):
    """A bad flag, file or value, found before training starts; the message names it."""


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite."""


# ---------------------------------------------------------------------------------------------
# Command line


def gpu_list(text):
    """--gpus: '' is the CPU, '0,2' picks GPUs 0 and 2."""
    text = text.strip()
    if not text:
        return ()
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of GPU ids, got {text!r}") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"GPU ids must be distinct and >= 0, got {text!r}")
    return gpus


def epoch_list(text):
    """--lr-steps: '200,300,350'."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of epochs, got {text!r}") from None


def rgb(text):
    """--mean-rgb / --std-rgb: three comma-separated numbers."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values


def boolean(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(kind):
    def convert(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return convert


positive_int = _positive(int)
positive_float = _positive(float)


def default_gpus():
    """The GPUs MXNet can use, as a --gpus string ('' when there is none)."""
    return ",".join(str(i) for i in range(mx.context.num_gpus()))


def add_common_arguments(parser):
    """The flags both entry points share, in argparse groups. Defaults that depend on the
    dataset or network (epochs, lr, batch, mean/std...) are set by the entry point's presets."""
    net = parser.add_argument_group("network (a flag left out takes the network's default)")
    net.add_argument("--network", help="network name (see `python -m network`)")
    for key, (kind, text) in CONFIG_FLAGS.items():
        net.add_argument("--" + key.replace("_", "-"), type=kind, help=text)

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", help="directory with the record files (default data/<dataset>)")
    data.add_argument("--num-classes", type=positive_int, help="number of classes")
    data.add_argument("--mean-rgb", type=rgb, help="per-channel mean subtracted, 'R,G,B'")
    data.add_argument("--std-rgb", type=rgb, help="per-channel std divided by, 'R,G,B'")
    data.add_argument("--data-threads", type=positive_int, default=4,
                      help="decoding/augmentation threads of each record reader")

    train = parser.add_argument_group("training")
    train.add_argument("--gpus", type=gpu_list, default=default_gpus(),
                       help="comma list of GPU ids; '' trains on the CPU "
                            "(default: every GPU MXNet can use, here %(default)r)")
    train.add_argument("--batch-size", type=positive_int, help="training batch size (per worker)")
    train.add_argument("--test-batch-size", type=positive_int, help="validation batch size")
    train.add_argument("--num-epochs", type=positive_int, help="number of training epochs")
    train.add_argument("--lr", type=positive_float, help="initial learning rate")
    train.add_argument("--lr-factor", type=positive_float,
                       help="learning-rate multiplier at each step")
    train.add_argument("--lr-steps", type=epoch_list,
                       help="epochs after which the lr is multiplied by --lr-factor, "
                            "e.g. 200,300,350 (default: 1/2, 3/4, 7/8 of the epochs)")
    train.add_argument("--lr-step-every", type=positive_int,
                       help="multiply the lr by --lr-factor every N epochs (instead of --lr-steps)")
    train.add_argument("--wd", type=float, help="weight decay (on every weight, bias, gamma, beta)")
    train.add_argument("--momentum", type=float, help="momentum")
    train.add_argument("--optimizer", choices=("nag", "sgd"), help="nag = Nesterov SGD")
    train.add_argument("--kv-store", default="device",
                       help="MXNet kvstore: local, device, or dist_sync / dist_device_sync / "
                            "dist_async "
                            "(multi-machine, run through tools/launch.py)")
    train.add_argument("--rand-seed", type=int,
                       help="seed of the initialisation and data order (default: from the clock)")

    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--model-prefix",
                     help="checkpoint prefix: PREFIX-symbol.json, PREFIX-NNNN.params/.states "
                          "(default runs/<dataset>/<network and config>/model)")
    run.add_argument("--log-file", help="log file (default PREFIX.log; appended to)")
    run.add_argument("--checkpoint-epochs", type=positive_int,
                     help="save every N epochs (and always at the end; default num-epochs/8)")
    run.add_argument("--log-iters", type=positive_int, default=50,
                     help="log speed and metrics every N batches")
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--load-epoch", type=int,
                        help="continue from checkpoint PREFIX-NNNN (N epochs done)")
    resume.add_argument("--resume", action="store_true",
                        help="continue from the latest complete checkpoint under --model-prefix")
    return parser


def parse_with_presets(parser, argv, presets):
    """Two-pass parse: `presets(first_pass_args)` returns defaults that depend on the dataset,
    the network or the devices; they are installed with set_defaults before the final parse, so
    anything given on the command line still wins and `args` is never edited afterwards."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # --help waits for the final pass, so it shows the defaults of the chosen dataset/network.
    first, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    parser.set_defaults(**presets(first))
    return parser.parse_args(argv)


# Every network config key has a flag: the key with dashes (a test checks the registry).
CONFIG_FLAGS = {
    "depth": (positive_int, "network depth (CIFAR networks)"),
    "width": (positive_int, "stage-1 width of plain / resnet"),
    "primary_partition": (positive_int, "L: groups of the primary (spatial) group convolution"),
    "secondary_partition": (positive_int, "M: groups of the secondary (1x1) group convolution"),
    "variant": (str, "named variant of resnet_igc_imgnet_d18, e.g. L4M32"),
    "width_multiplier": (positive_float, "width multiplier (IGCV2/IGCV3/MobileNetV2)"),
    "depth_multiplier": (positive_float, "block-count multiplier (igcv3_cifar)"),
    "t1_expansion": (boolean, "keep the t=1 expansion conv (MobileNetV2, as the authors)"),
    "permutation": (str, "'reorder' (native op) or 'reshape' (reshape-swapaxes-reshape)"),
    "conv_impl": (str, "convolution implementation of the IGC units"),
}


def network_config(args, implied=None):
    """The network's config from the flags that were given, checked against what it accepts."""
    try:
        accepted = network.network_defaults(args.network)
    except ValueError as err:
        raise ConfigError(f"--network: {err}") from None
    given = {key: getattr(args, key) for key in CONFIG_FLAGS if getattr(args, key) is not None}
    # A flag the network name already states (the authors' --depth 18 for *_d18) is harmless.
    given = {k: v for k, v in given.items() if (implied or {}).get(k) != v}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        valid = ", ".join("--" + key.replace("_", "-") for key in accepted) or "none"
        raise ConfigError(f"{flags} does not apply to network {args.network!r} "
                          f"(its options: {valid})")
    return given


def run_name(network_name, config):
    """Directory name for a run's checkpoints: the network and its given config, e.g.
    plain_igc_d38_L24_M2."""
    short = {"depth": "d", "width": "w", "primary_partition": "L", "secondary_partition": "M",
             "variant": "", "width_multiplier": "x", "depth_multiplier": "dx", "t1_expansion": "t1",
             "permutation": "", "conv_impl": ""}
    parts = [network_name] + [f"{short[k]}{config[k]}" for k in short if k in config]
    return "_".join(parts)


# ---------------------------------------------------------------------------------------------
# Record files

_RECORDIO_MAGIC = 0xced7230a
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2


@dataclasses.dataclass(frozen=True)
class RecordFile:
    rec: str
    idx: str
    num_records: int
    num_classes_seen: int


def read_labels(rec_path, idx_path):
    """Labels of every record, read from the record headers the index points at (no decoding)."""
    offsets = []
    with open(idx_path) as index:
        for line_no, line in enumerate(index, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise ConfigError(f"{idx_path}:{line_no}: expected 'key offset', "
                                  f"got {line.strip()!r}")
            offsets.append(int(fields[1]))
    offsets.sort()
    labels = np.empty(len(offsets), dtype=np.float64)
    size = os.path.getsize(rec_path)
    with open(rec_path, "rb") as rec:
        for i, offset in enumerate(offsets):
            rec.seek(offset)
            head = rec.read(8 + _IR_HEADER.size)
            if len(head) < 8 + _IR_HEADER.size or offset >= size:
                raise ConfigError(f"{rec_path}: record at offset {offset} (from {idx_path}) is "
                                  "truncated; the .rec and .idx do not match")
            magic, _ = struct.unpack("<II", head[:8])
            if magic != _RECORDIO_MAGIC:
                raise ConfigError(f"{rec_path}: no record at offset {offset} (from {idx_path}); "
                                  "the .rec and .idx do not match")
            flag, label, _, _ = _IR_HEADER.unpack(head[8:])
            if flag != 0:
                raise ConfigError(f"{rec_path}: record at offset {offset} has {flag} labels; "
                                  "classification needs one label per image")
            labels[i] = label
    return labels


def check_record_file(data_dir, name, num_classes, flag="--data-dir"):
    """A record set `name`.rec/.idx in `data_dir` that exists, is not empty, and whose labels
    are integers in [0, num_classes)."""
    rec = os.path.join(data_dir, name + ".rec")
    idx = os.path.join(data_dir, name + ".idx")
    for path in (rec, idx):
        if not os.path.isfile(path):
            raise ConfigError(f"{flag}: {path} not found (tools/make_rec.sh writes "
                              f"{name}.rec and {name}.idx)")
    if os.path.getsize(rec) == 0 or os.path.getsize(idx) == 0:
        raise ConfigError(f"{flag}: {rec if os.path.getsize(rec) == 0 else idx} is empty")
    labels = read_labels(rec, idx)
    if labels.size == 0:
        raise ConfigError(f"{flag}: {idx} lists no records")
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = labels[bad][0]
        raise ConfigError(f"{rec}: {int(bad.sum())} label(s) outside 0..{num_classes - 1} "
                          f"(first: {first:g}); --num-classes is {num_classes}")
    return RecordFile(rec, idx, int(labels.size), int(np.unique(labels).size))


# ---------------------------------------------------------------------------------------------
# The job: everything fit() needs, resolved and checked


@dataclasses.dataclass(frozen=True)
class Job:
    network: str
    network_config: dict
    num_classes: int
    data_shape: tuple
    contexts: tuple
    kv_store: str
    train: RecordFile
    val: RecordFile
    batch_size: int
    test_batch_size: int
    mean_rgb: tuple
    std_rgb: tuple
    train_augment: dict
    val_augment: dict
    data_threads: int
    num_epochs: int
    optimizer: str
    lr: float
    momentum: float
    wd: float
    lr_factor: float
    lr_steps: tuple          # epochs after which lr *= lr_factor
    lr_step_every: int       # or every N epochs (0: not used)
    model_prefix: str
    log_file: str
    checkpoint_epochs: int
    log_iters: int
    load_epoch: int          # None: start fresh
    resume: bool
    seed: int
    top_k: int               # also report top-k accuracy (0: only top-1)

    def describe(self):
        """The resolved configuration, for the log."""
        out = dataclasses.asdict(self)
        out["contexts"] = [str(c) for c in self.contexts]
        for split, record in (("train", self.train), ("val", self.val)):
            out[split] = (f"{record.rec} ({record.num_records} images, "
                          f"{record.num_classes_seen} classes)")
        return out


def create_kvstore(kv_store):
    """The dist kvstore (None for local ones): it connects to the scheduler named by DMLC_*."""
    if kv_store not in DIST_KV_STORES:
        return None
    if "DMLC_ROLE" not in os.environ:
        raise ConfigError(f"--kv-store {kv_store} needs a parameter-server cluster: start the "
                          "command through tools/launch.py")
    return mx.kv.create(kv_store)


def contexts_for(gpus):
    if not gpus:
        return (mx.cpu(),)
    available = mx.context.num_gpus()
    missing = [g for g in gpus if g >= available]
    if missing:
        raise ConfigError(f"--gpus: GPU(s) {missing} not available to MXNet "
                          f"({available} found); use --gpus '' for the CPU")
    return tuple(mx.gpu(g) for g in gpus)


def default_lr_steps(num_epochs):
    """The authors' schedule: lr x0.1 after 1/2, 3/4 and 7/8 of the epochs (steps that coincide
    in very short runs count once)."""
    return tuple(sorted({s for s in (num_epochs // 2, num_epochs * 3 // 4, num_epochs * 7 // 8)
                         if 0 < s < num_epochs}))


def check_lr_steps(steps, num_epochs):
    if any(s < 1 for s in steps) or list(steps) != sorted(set(steps)):
        raise ConfigError(f"--lr-steps must be increasing positive epochs, got {list(steps)}")
    return tuple(s for s in steps if s < num_epochs)


def resolve_job(args, *, dataset, dataset_kind, train_name, val_name, train_augment, val_augment,
                top_k, kv=None, implied=None):
    """Check the whole configuration and resolve it into a Job; raises ConfigError."""
    config = network_config(args, implied)
    info = network.network_info(args.network)
    if info["dataset_kind"] != dataset_kind:
        script = "train_imagenet.py" if info["dataset_kind"] == "imagenet" else "train_model.py"
        raise ConfigError(f"--network {args.network!r} is an {info['dataset_kind']} network; "
                          f"train it with {script}")
    try:
        # Building once here turns an invalid depth or partition into a message before any I/O.
        network.get_symbol(args.network, args.num_classes, **config)
    except ValueError as err:
        raise ConfigError(f"--network {args.network}: {err}") from None
    except (RuntimeError, utility.OpsLibraryError) as err:
        raise ConfigError(f"--network {args.network}: {err}") from None

    data_dir = args.data_dir or os.path.join(utility.PROJECT_DIR, "data", dataset)
    if not os.path.isdir(data_dir):
        raise ConfigError(f"--data-dir: {data_dir} is not a directory "
                          f"(make it with tools/make_rec.sh {dataset})")
    train = check_record_file(data_dir, train_name, args.num_classes)
    val = check_record_file(data_dir, val_name, args.num_classes)

    if args.kv_store in DIST_KV_STORES:
        num_workers, rank = kv.num_workers, kv.rank
    elif args.kv_store in ("local", "device"):
        num_workers, rank = 1, 0
    else:
        raise ConfigError(f"--kv-store must be one of local, device, {', '.join(DIST_KV_STORES)}; "
                          f"got {args.kv_store!r}")
    per_worker = train.num_records // num_workers
    if args.batch_size > per_worker:
        where = f" per worker ({num_workers} workers)" if num_workers > 1 else ""
        raise ConfigError(f"--batch-size {args.batch_size} is larger than the {per_worker} "
                          f"training images{where} in {train.rec}")

    if args.lr_steps is not None and args.lr_step_every is not None:
        raise ConfigError("give either --lr-steps or --lr-step-every, not both")
    lr_steps = () if args.lr_step_every else check_lr_steps(
        args.lr_steps if args.lr_steps is not None else default_lr_steps(args.num_epochs),
        args.num_epochs)
    if args.load_epoch is not None and not 0 <= args.load_epoch <= args.num_epochs:
        raise ConfigError(f"--load-epoch {args.load_epoch} is outside 0..{args.num_epochs} "
                          "(--num-epochs)")
    if any(v <= 0 for v in args.std_rgb):
        raise ConfigError(f"--std-rgb values must be > 0, got {args.std_rgb}")

    prefix = args.model_prefix or os.path.join(
        "runs", dataset, run_name(args.network, config), "model")
    log_file = args.log_file or (prefix + (f".rank{rank}" if rank else "") + ".log")
    seed = args.rand_seed if args.rand_seed is not None else int(time.time()) % (2 ** 31)
    size = info["input_size"]
    return Job(
        network=args.network, network_config=config, num_classes=args.num_classes,
        data_shape=(3, size, size), contexts=contexts_for(args.gpus), kv_store=args.kv_store,
        train=train, val=val, batch_size=args.batch_size,
        test_batch_size=min(args.test_batch_size, val.num_records),
        mean_rgb=tuple(args.mean_rgb), std_rgb=tuple(args.std_rgb),
        train_augment=train_augment, val_augment=val_augment, data_threads=args.data_threads,
        num_epochs=args.num_epochs, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, wd=args.wd, lr_factor=args.lr_factor, lr_steps=lr_steps,
        lr_step_every=args.lr_step_every or 0, model_prefix=prefix, log_file=log_file,
        checkpoint_epochs=args.checkpoint_epochs or max(1, args.num_epochs // 8),
        log_iters=args.log_iters, load_epoch=args.load_epoch, resume=args.resume, seed=seed,
        top_k=top_k if args.num_classes > top_k else 0)


# ---------------------------------------------------------------------------------------------
# Data iterators


def record_iter(record, batch_size, data_shape, mean, std, augment, *, threads=1, shuffle=False,
                seed=0, num_parts=1, part_index=0):
    """An ImageRecordIter that really normalises: (pixel - mean) / std per channel through
    mean_*/std_* (the authors' scale_*/fill_value_* keywords were silently ignored by MXNet),
    with padding filled by the mean grey so padded pixels are about 0 after normalisation.
    num_parts/part_index: this worker's share, split by record count (the .idx is used).
    `seed` drives the shuffle and, through seed_aug, the crops and flips (left unset, MXNet
    seeds them with a constant, so every reader would repeat the same augmentation draws)."""
    return mx.io.ImageRecordIter(
        path_imgrec=record.rec, path_imgidx=record.idx, data_shape=data_shape,
        batch_size=batch_size, label_width=1, shuffle=shuffle, seed=seed, seed_aug=seed,
        num_parts=num_parts, part_index=part_index, preprocess_threads=threads,
        mean_r=mean[0], mean_g=mean[1], mean_b=mean[2], std_r=std[0], std_g=std[1], std_b=std[2],
        fill_value=int(round(sum(mean) / 3)), **augment)


def train_batches(job, epoch, steps, num_parts=1, part_index=0):
    """The batches of one training epoch. A fresh reader per epoch, seeded by (seed, epoch), so
    the data order and augmentation of epoch e are the same whether or not the run was resumed;
    exactly `steps` batches, so every dist_sync worker does the same number of updates."""
    reader = record_iter(job.train, job.batch_size, job.data_shape, job.mean_rgb, job.std_rgb,
                         job.train_augment, threads=job.data_threads, shuffle=True,
                         seed=job.seed + epoch, num_parts=num_parts, part_index=part_index)
    for step, batch in enumerate(reader):
        if step == steps:
            break
        yield batch


class Stats:
    """Running cross-entropy loss and top-1 / top-k accuracy over a stream of batches."""

    def __init__(self, top_k=0):
        self.top_k = top_k
        self.reset()

    def reset(self):
        self.count = 0
        self.loss = 0.0
        self.correct = 0
        self.correct_k = 0

    def update(self, probs, labels):
        """Add a batch; returns its mean loss (NaN/inf when the network diverged)."""
        labels = labels.astype(np.int64)
        picked = probs[np.arange(len(labels)), labels]
        losses = -np.log(np.maximum(picked, 1e-12))
        # A NaN probability must show up as a NaN loss, not be clipped away by maximum().
        losses[~np.isfinite(picked)] = np.nan
        batch_loss = float(losses.mean()) if np.isfinite(probs).all() else float("nan")
        self.count += len(labels)
        self.loss += float(losses.sum())
        self.correct += int((probs.argmax(axis=1) == labels).sum())
        if self.top_k:
            top = np.argpartition(-probs, self.top_k - 1, axis=1)[:, :self.top_k]
            self.correct_k += int((top == labels[:, None]).any(axis=1).sum())
        return batch_loss

    def values(self):
        n = max(self.count, 1)
        out = {"loss": self.loss / n, "acc": 100.0 * self.correct / n}
        if self.top_k:
            out[f"top{self.top_k}-acc"] = 100.0 * self.correct_k / n
        return out


def format_values(prefix, values):
    return " ".join(f"{prefix}-{k}={v:.4f}" if k == "loss" else f"{prefix}-{k}={v:.2f}%"
                    for k, v in values.items())


# ---------------------------------------------------------------------------------------------
# Optimiser, initialisation, schedule


def make_initializer():
    """The authors' initialisation: Xavier uniform ('in', magnitude 1) for the classifier, Xavier
    gaussian ('in', magnitude 2, i.e. He) for every other weight; BN gamma 1, beta 0."""
    return mx.init.Mixed([".*fc.*", ".*"], [
        mx.init.Xavier(rnd_type="uniform", factor_type="in", magnitude=1),
        mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)])


def make_lr_scheduler(lr, factor, steps_per_epoch, lr_steps=(), step_every=0):
    """lr x factor after each epoch in lr_steps, or every `step_every` epochs. A stock MXNet
    scheduler (dist servers unpickle it) counting updates from the start of the run, so a resumed
    run (optimizer begin_num_update) follows the same trajectory. None: constant lr."""
    if step_every:
        return mx.lr_scheduler.FactorScheduler(step=step_every * steps_per_epoch, factor=factor,
                                               base_lr=lr)
    if not lr_steps:
        return None
    return mx.lr_scheduler.MultiFactorScheduler(step=[s * steps_per_epoch for s in lr_steps],
                                                factor=factor, base_lr=lr)


def lr_of_epoch(scheduler, lr, epoch, steps_per_epoch):
    """The learning rate used by the updates of `epoch` (0-based), from a copy of the scheduler."""
    if scheduler is None:
        return lr
    return copy.deepcopy(scheduler)((epoch + 1) * steps_per_epoch)


def make_optimizer(name, param_names, *, learning_rate, momentum, wd, rescale_grad,
                   lr_scheduler=None, begin_num_update=0):
    """Nesterov ('nag') or SGD with weight decay on every *_weight, *_bias, *_gamma and *_beta and
    none on anything else. Explicit per-name multipliers, so MXNet's default (weights and gammas
    only) never applies; they travel with the optimizer to dist servers."""
    params = dict(learning_rate=learning_rate, wd=wd, momentum=momentum,
                  rescale_grad=rescale_grad, begin_num_update=begin_num_update)
    if lr_scheduler is not None:
        params["lr_scheduler"] = lr_scheduler
    optimizer = mx.optimizer.create(name, **params)
    optimizer.set_wd_mult({name: 1.0 if name.endswith(DECAYED_SUFFIXES) else 0.0
                           for name in param_names})
    return optimizer


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _write_atomically(path, write):
    """write(tmp_path) then fsync and rename over `path`: a crash leaves the old file or none."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class Checkpoints:
    """PREFIX-symbol.json, PREFIX-NNNN.params (as mx.model.save_checkpoint names them, loadable
    with mx.model.load_checkpoint) and PREFIX-NNNN.states (optimizer state, when it is local).
    Each file is written atomically and the .params last, so an existing .params marks a
    complete checkpoint."""

    def __init__(self, prefix):
        self.prefix = prefix

    def params_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.params"

    def states_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.states"

    @property
    def symbol_path(self):
        return f"{self.prefix}-symbol.json"

    def save(self, epoch, symbol, module, with_states):
        os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
        _write_atomically(self.symbol_path, symbol.save)
        if with_states:
            _write_atomically(self.states_path(epoch), module.save_optimizer_states)
        arg_params, aux_params = module.get_params()
        blob = {f"arg:{k}": v for k, v in arg_params.items()}
        blob.update({f"aux:{k}": v for k, v in aux_params.items()})
        _write_atomically(self.params_path(epoch), lambda tmp: mx.nd.save(tmp, blob))

    def epochs(self):
        directory, base = os.path.split(os.path.abspath(self.prefix))
        pattern = re.compile(re.escape(base) + r"-(\d{4,})\.params$")
        if not os.path.isdir(directory):
            return []
        return sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(directory)) if m)

    def load(self, epoch):
        """(arg_params, aux_params, states_path or None); ConfigError when unreadable."""
        path = self.params_path(epoch)
        if not os.path.isfile(path):
            raise ConfigError(f"--load-epoch {epoch}: {path} not found")
        try:
            blob = mx.nd.load(path)
        except mx.base.MXNetError as err:
            raise ConfigError(f"checkpoint {path} is unreadable: {str(err).splitlines()[0]}") \
                from None
        arg_params = {k[4:]: v for k, v in blob.items() if k.startswith("arg:")}
        aux_params = {k[4:]: v for k, v in blob.items() if k.startswith("aux:")}
        states = self.states_path(epoch)
        return arg_params, aux_params, states if os.path.isfile(states) else None

    def latest_complete(self):
        """(epoch, loaded) of the newest checkpoint that loads, or (None, None)."""
        for epoch in reversed(self.epochs()):
            try:
                return epoch, self.load(epoch)
            except ConfigError as err:
                LOGGER.warning("skipping checkpoint: %s", err)
        return None, None


def weights_digest(module):
    """SHA-1 over the learnable parameters' bytes in name order: equal digests = identical
    weights. BN running statistics are left out: under a dist kvstore each worker keeps its own."""
    arg_params, _ = module.get_params()
    digest = hashlib.sha1()
    for name, value in sorted(arg_params.items()):
        digest.update(name.encode())
        digest.update(value.asnumpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Logging


class _LogTo:
    """Log to stdout and a file for the duration of a run (safe to nest runs in one process)."""

    def __init__(self, path, rank):
        self.path, self.rank = path, rank

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        node = f"[{self.rank}] " if self.rank else ""
        formatter = logging.Formatter(f"%(asctime)s {node}%(message)s", "%Y-%m-%d %H:%M:%S")
        self.handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(self.path)]
        for handler in self.handlers:
            handler.setFormatter(formatter)
            LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False
        return self

    def __exit__(self, *exc):
        for handler in self.handlers:
            LOGGER.removeHandler(handler)
            handler.close()


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------
# The loop


def evaluate(symbol, arg_params, aux_params, job):
    """Loss and accuracy over the whole validation set, padding of the last batch excluded.

    A fresh inference module each time: MXNet 1.9's MKLDNN inference graph caches the weights it
    first saw, so a module bound once and given new weights later scores the old ones; and an
    inference pass through the training executors makes the next updates nondeterministic.
    A fresh reader too: after a reset, ImageRecordIter skips the records it borrowed to pad the
    previous pass's last batch (and with round_batch=False it reports no padding)."""
    module = mx.mod.Module(symbol, data_names=("data",), label_names=("softmax_label",),
                           context=list(job.contexts), logger=LOGGER)
    module.bind(data_shapes=[("data", (job.test_batch_size,) + job.data_shape)],
                label_shapes=[("softmax_label", (job.test_batch_size,))], for_training=False)
    module.set_params(arg_params, aux_params)
    stats = Stats(job.top_k)
    for batch in record_iter(job.val, job.test_batch_size, job.data_shape, job.mean_rgb,
                             job.std_rgb, job.val_augment, threads=job.data_threads):
        module.forward(batch, is_train=False)
        valid = batch.data[0].shape[0] - batch.pad
        probs = module.get_outputs()[0].asnumpy()[:valid]
        stats.update(probs, batch.label[0].asnumpy()[:valid])
    return stats.values()


def fit(job, kv=None):
    """Train `job`; returns the per-epoch history (list of dicts) of this run."""
    rank = kv.rank if kv is not None else 0
    with _LogTo(job.log_file, rank):
        return _fit(job, kv, rank)


def _start_point(job, checkpoints):
    """(begin_epoch, (arg, aux, states) or None) from --load-epoch / --resume."""
    if job.load_epoch is not None:
        return job.load_epoch, checkpoints.load(job.load_epoch) if job.load_epoch else None
    if job.resume:
        epoch, loaded = checkpoints.latest_complete()
        if epoch is None:
            LOGGER.info("--resume: no complete checkpoint at %s; starting from epoch 0",
                        job.model_prefix)
            return 0, None
        LOGGER.info("--resume: continuing from %s", checkpoints.params_path(epoch))
        return epoch, loaded
    if checkpoints.epochs():
        LOGGER.warning("checkpoints already exist at %s and will be overwritten "
                       "(use --resume to continue them)", job.model_prefix)
    return 0, None


def _train_epoch(module, job, epoch, steps, num_workers, rank):
    """One epoch of updates; logs every job.log_iters batches; returns the epoch's Stats."""
    stats, window = Stats(job.top_k), Stats(job.top_k)
    window_tic = time.time()
    for nbatch, batch in enumerate(train_batches(job, epoch, steps, num_workers, rank), 1):
        module.forward_backward(batch)
        module.update()
        probs = module.get_outputs()[0].asnumpy()
        labels = batch.label[0].asnumpy()
        loss = stats.update(probs, labels)
        window.update(probs, labels)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training loss is {loss} at epoch {epoch + 1}, batch {nbatch}: the network "
                "diverged (try a lower --lr); checkpoints so far are kept")
        if nbatch % job.log_iters == 0:
            speed = window.count / max(time.time() - window_tic, 1e-9)
            LOGGER.info("Epoch[%d] Batch[%d/%d] speed=%.1f img/s %s", epoch + 1, nbatch, steps,
                        speed, format_values("train", window.values()))
            window.reset()
            window_tic = time.time()
    return stats


def _fit(job, kv, rank):
    num_workers = kv.num_workers if kv is not None else 1
    LOGGER.info("configuration: %s", json.dumps(job.describe(), default=str))
    checkpoints = Checkpoints(job.model_prefix)
    begin_epoch, loaded = _start_point(job, checkpoints)
    if begin_epoch >= job.num_epochs:
        LOGGER.info("nothing to do: %d of %d epochs already done", begin_epoch, job.num_epochs)
        return []

    mx.random.seed(job.seed)
    np.random.seed(job.seed)
    symbol = network.get_symbol(job.network, job.num_classes, **job.network_config)
    LOGGER.info("network %s %s: %d parameters", job.network, job.network_config,
                utility.count_params(symbol, (1,) + tuple(job.data_shape))["total"])

    steps = (job.train.num_records // num_workers) // job.batch_size
    module = mx.mod.Module(symbol, data_names=("data",), label_names=("softmax_label",),
                           context=list(job.contexts), logger=LOGGER)
    module.bind(data_shapes=[("data", (job.batch_size,) + job.data_shape)],
                label_shapes=[("softmax_label", (job.batch_size,))])
    arg_params, aux_params, states = loaded if loaded else (None, None, None)
    try:
        module.init_params(make_initializer(), arg_params=arg_params, aux_params=aux_params,
                           allow_missing=False)
    except (RuntimeError, AssertionError, mx.base.MXNetError) as err:
        raise ConfigError(f"checkpoint does not match network {job.network} "
                          f"{job.network_config}: {err}") from None

    sync = kv is not None and "dist" in kv.type and "_sync" in kv.type
    scheduler = make_lr_scheduler(job.lr, job.lr_factor, steps, job.lr_steps, job.lr_step_every)
    param_names = [n for n in symbol.list_arguments() if n not in ("data", "softmax_label")]
    optimizer = make_optimizer(
        job.optimizer, param_names, learning_rate=job.lr, momentum=job.momentum, wd=job.wd,
        rescale_grad=1.0 / (job.batch_size * (num_workers if sync else 1)),
        lr_scheduler=scheduler, begin_num_update=begin_epoch * steps)
    module.init_optimizer(kvstore=kv if kv is not None else job.kv_store, optimizer=optimizer)
    # Under a dist kvstore the optimizer state lives on the servers and cannot be saved.
    local_states = kv is None
    if states and local_states:
        module.load_optimizer_states(states)
    elif loaded and not states and begin_epoch:
        LOGGER.warning("no optimizer state saved with epoch %d: momentum restarts from zero",
                       begin_epoch)

    LOGGER.info("training epochs %d..%d, %d batches of %d per epoch%s", begin_epoch + 1,
                job.num_epochs, steps, job.batch_size,
                f" on each of {num_workers} workers" if num_workers > 1 else "")
    history = []
    run_start = time.time()
    for epoch in range(begin_epoch, job.num_epochs):
        tic = time.time()
        stats = _train_epoch(module, job, epoch, steps, num_workers, rank)
        train_time = time.time() - tic
        val = evaluate(symbol, *module.get_params(), job)
        elapsed = time.time() - tic
        lr = lr_of_epoch(scheduler, job.lr, epoch, steps)
        done = epoch + 1 - begin_epoch
        eta = (time.time() - run_start) / done * (job.num_epochs - epoch - 1)
        record = {"epoch": epoch + 1, "lr": lr, "time": elapsed,
                  **{f"train-{k}": v for k, v in stats.values().items()},
                  **{f"val-{k}": v for k, v in val.items()}}
        history.append(record)
        LOGGER.info("Epoch[%d/%d] %s %s lr=%g speed=%.1f img/s time=%.1fs eta=%s", epoch + 1,
                    job.num_epochs, format_values("train", stats.values()),
                    format_values("val", val), lr, stats.count / max(train_time, 1e-9),
                    elapsed, _clock(eta))
        if rank == 0 and ((epoch + 1) % job.checkpoint_epochs == 0 or epoch + 1 == job.num_epochs):
            checkpoints.save(epoch + 1, symbol, module, with_states=local_states)
            LOGGER.info("saved checkpoint %s", checkpoints.params_path(epoch + 1))
    LOGGER.info("finished %d epochs in %s; weights digest %s", job.num_epochs,
                _clock(time.time() - run_start), weights_digest(module))
    return history


def run(parser, build_job, argv):
    """Entry-point driver: parse, resolve, fit; user mistakes and divergence exit with a one-line
    message instead of a traceback."""
    try:
        job, kv = build_job(argv)
        return fit(job, kv)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except TrainingDiverged as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
