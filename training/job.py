"""The resolved configuration of a run (`Job`) and the checks that produce it.

`resolve_job` turns parsed flags into a frozen Job, grouped by concern (network, data,
optimisation, run bookkeeping, devices). Every user mistake surfaces here as a `ConfigError`
naming the flag or file, before any training.
"""
import dataclasses
import os
import re
import time

import mxnet as mx

import network
import utility

from .data import RecordFile, check_record_file
from .errors import ConfigError

DIST_KV_STORES = ("dist_sync", "dist_device_sync", "dist_async")
# The deepest network of the papers, ResNet-1202 (He et al. 2016), has at most 1,200 blocks in any
# family here; far more is a typo, and building such a graph would take minutes before failing.
MAX_BLOCKS = 2000


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    name: str
    config: dict             # the config keys that were given (the rest take the defaults)
    num_classes: int
    data_shape: tuple        # (3, H, W) of one image
    device: str = "cpu"      # what the graph is built for: the device type of the job's contexts

    def symbol(self):
        return network.get_symbol(self.name, self.num_classes, device=self.device, **self.config)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    dataset: str             # 'cifar10', ..., 'demo' or 'imagenet'
    train: RecordFile
    val: RecordFile
    batch_size: int
    test_batch_size: int
    mean_rgb: tuple
    std_rgb: tuple
    train_augment: dict      # ImageRecordIter keywords of the training reader
    val_augment: dict        # and of the validation reader
    threads: int
    top_k: int               # also report top-k accuracy (0: only top-1)


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    optimizer: str
    lr: float
    momentum: float
    wd: float
    num_epochs: int
    lr_factor: float
    lr_steps: tuple          # epochs after which lr *= lr_factor
    lr_step_every: int       # or every N epochs (0: not used)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model_prefix: str
    pretrained: str          # .params file that seeds a fresh run by name and shape (or None)
    freeze: tuple            # names of the learnable arguments kept fixed
    log_file: str
    checkpoint_epochs: int
    log_iters: int
    load_epoch: int          # None: start fresh
    resume: bool
    seed: int                # --rand-seed, else from the clock
    seed_given: bool         # not given: a continued run keeps the seed it was started with
    allow_changes: bool      # continue a checkpoint even where this command defines another run
    precise_bn: int          # batches of precise BN statistics before validation (0: off)


@dataclasses.dataclass(frozen=True)
class Job:
    network: NetworkSpec
    data: DataSpec
    optim: OptimSpec
    run: RunSpec
    contexts: tuple
    kv_store: str

    def model_info(self):
        """What a checkpoint of this run is, for scoring and prediction (PREFIX-model.json):
        the network, its classes and input, and the validation preprocessing it was trained
        with."""
        net, data = self.network, self.data
        return {"network": net.name, "config": net.config, "num_classes": net.num_classes,
                "data_shape": list(net.data_shape), "dataset": data.dataset,
                "data_dir": os.path.dirname(os.path.abspath(data.val.rec)),
                "mean_rgb": list(data.mean_rgb), "std_rgb": list(data.std_rgb),
                "val_augment": data.val_augment}

    def identity(self):
        """What defines the run, for a checkpoint to record and --resume to compare: the
        network with its full config, the data by content (not by path), the seed and the
        recipe. Batch size of validation, threads, devices and --num-epochs may change."""
        net, data, optim = self.network, self.data, self.optim
        return {"network": net.name,
                "config": {**network.network_defaults(net.name), **net.config},
                "num_classes": net.num_classes, "data_shape": list(net.data_shape),
                "train_data": data.train.identity, "val_data": data.val.identity,
                "seed": self.run.seed, "batch_size": data.batch_size,
                "mean_rgb": list(data.mean_rgb), "std_rgb": list(data.std_rgb),
                "train_augment": data.train_augment, "val_augment": data.val_augment,
                "optimizer": optim.optimizer, "lr": optim.lr, "momentum": optim.momentum,
                "wd": optim.wd, "lr_factor": optim.lr_factor, "lr_steps": list(optim.lr_steps),
                "lr_step_every": optim.lr_step_every, "freeze": list(self.run.freeze)}

    def describe(self):
        """The resolved configuration, for the log."""
        out = dataclasses.asdict(self)
        out["contexts"] = [str(c) for c in self.contexts]
        # Every key with the value it resolved to, not only those given on the command line.
        out["network"]["config"] = {**network.network_defaults(self.network.name),
                                    **self.network.config}
        if len(self.run.freeze) > 4:
            out["run"]["freeze"] = (f"{len(self.run.freeze)} arrays, {self.run.freeze[0]} ... "
                                    f"{self.run.freeze[-1]}")
        for split in ("train", "val"):
            record = getattr(self.data, split)
            out["data"][split] = (f"{record.rec} ({record.num_records} images, "
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


def check_lr_steps(steps):
    """Increasing positive epochs. Steps at or after --num-epochs are kept (the run may be
    continued with --resume up to them); the loop warns about them."""
    if any(s < 1 for s in steps) or list(steps) != sorted(set(steps)):
        raise ConfigError(f"--lr-steps must be increasing positive epochs, got {list(steps)}")
    return tuple(steps)


def check_writable(path, flag):
    """`path` can be created (its nearest existing folder is a writable folder) or, when it
    exists, overwritten: found now, not after an epoch of training."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag}: {path} is not writable")
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag}: cannot create {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write under {folder} (permission denied or a "
                          "read-only file system)")


def network_config(args, implied=None):
    """The network's config from the flags that were given, checked against what it accepts."""
    try:
        accepted = network.network_options(args.network)
    except ValueError as err:
        raise ConfigError(f"--network: {err}") from None
    given = {key: getattr(args, key) for key in network.config_options()
             if getattr(args, key) is not None}
    # A flag the network name already states (the authors' --depth 18 for *_d18) is harmless.
    given = {k: v for k, v in given.items() if (implied or {}).get(k) != v}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        valid = ", ".join(option.flag for option in accepted.values()) or "none"
        raise ConfigError(f"{flags} does not apply to network {args.network!r} "
                          f"(its options: {valid})")
    return {key: given[key] for key in accepted if key in given}


def run_name(network_name, config):
    """Directory name for a run's checkpoints: the network and its given config in the builder's
    keyword order, each value behind its tag, e.g. plain_igc_d38_L24_M2."""
    options = network.network_options(network_name)
    parts = [network_name] + [f"{options[k].tag}{config[k]}" for k in options if k in config]
    return "_".join(parts)


def _flags(config):
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in config.items())


def _available_memory():
    """Bytes of memory available to this process (MemAvailable; physical memory without it)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_depth(name, config):
    """ConfigError when the config asks for more than MAX_BLOCKS blocks (found from the
    network's stage table, before its graph is built)."""
    try:
        blocks = sum(row.blocks for row in network.get_plan(name, **config))
    except ValueError:
        return  # an invalid config: building the graph says what is wrong with it
    if blocks > MAX_BLOCKS:
        raise ConfigError(f"network {name} {_flags(config)}: {blocks} blocks; the builders "
                          f"take at most {MAX_BLOCKS}")


def check_memory(name, config, symbol, data_shape, copies):
    """ConfigError when `copies` float32 copies of the graph's weights (training keeps weights,
    gradients and momentum) do not fit in the memory available."""
    params = utility.count_params(symbol, (1,) + tuple(data_shape))["total"]
    needed, available = 4 * params * copies, _available_memory()
    if needed > available:
        raise ConfigError(f"network {name} {_flags(config)}: {params:,} parameters need "
                          f"{needed / 2 ** 30:.1f} GiB ({copies} float32 copies), more than the "
                          f"{available / 2 ** 30:.1f} GiB of memory available")


def _network_spec(args, dataset_kind, implied, device, image_size=None):
    config = network_config(args, implied)
    info = network.network_info(args.network)
    if info["dataset_kind"] != dataset_kind:
        script = "train_imagenet.py" if info["dataset_kind"] == "imagenet" else "train_model.py"
        raise ConfigError(f"--network {args.network!r} is an {info['dataset_kind']} network; "
                          f"train it with {script}")
    size = image_size or info["input_size"]
    spec = NetworkSpec(args.network, config, args.num_classes, (3, size, size), device)
    check_depth(args.network, config)
    try:
        # Building once here turns an invalid depth or partition into a message before any I/O.
        symbol = spec.symbol()
    except (ValueError, RuntimeError, utility.OpsLibraryError) as err:
        raise ConfigError(f"--network {args.network}: {err}") from None
    if size != info["input_size"]:
        try:
            symbol.infer_shape(data=(1,) + spec.data_shape)
        except mx.base.MXNetError:
            raise ConfigError(f"--network {args.network} cannot take {size}x{size} images "
                              f"(it was designed for {info['input_size']}x"
                              f"{info['input_size']})") from None
    check_memory(args.network, config, symbol, spec.data_shape, copies=4)
    return spec


def _frozen_names(pattern, net):
    """The learnable arguments of `net` whose names match --freeze (re.search)."""
    if pattern is None:
        return ()
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"--freeze {pattern!r}: not a regular expression ({err})") from None
    names = [n for n in net.symbol().list_arguments() if n not in ("data", "softmax_label")]
    frozen = tuple(n for n in names if regex.search(n))
    if not frozen:
        raise ConfigError(f"--freeze {pattern!r} matches no argument of network {net.name} "
                          f"(e.g. {', '.join(names[:3])})")
    if len(frozen) == len(names):
        raise ConfigError(f"--freeze {pattern!r} matches every argument of network {net.name}: "
                          "nothing would train")
    return frozen


def _check_pretrained(path, load_epoch):
    if path is None:
        return None
    if load_epoch:
        raise ConfigError("--pretrained starts a fresh run; --load-epoch continues one: "
                          "give one of them")
    if not os.path.isfile(path):
        raise ConfigError(f"--pretrained {path}: file not found")
    return path


def _workers(kv_store, kv):
    if kv_store in DIST_KV_STORES:
        return kv.num_workers, kv.rank
    if kv_store in ("local", "device"):
        return 1, 0
    raise ConfigError(f"--kv-store must be one of local, device, {', '.join(DIST_KV_STORES)}; "
                      f"got {kv_store!r}")


def resolve_job(args, *, dataset, dataset_kind, train_name, val_name, train_augment, val_augment,
                top_k, kv=None, implied=None, image_size=None):
    """Check the whole configuration and resolve it into a Job; raises ConfigError.
    image_size: the side of the stored images when it is not the network's own input size."""
    contexts = contexts_for(args.gpus)
    net = _network_spec(args, dataset_kind, implied, contexts[0].device_type, image_size)

    data_dir = args.data_dir or os.path.join(utility.PROJECT_DIR, "data", dataset)
    if not os.path.isdir(data_dir):
        raise ConfigError(f"--data-dir: {data_dir} is not a directory "
                          f"(make it with tools/make_rec.sh {dataset})")
    train = check_record_file(data_dir, train_name, args.num_classes)
    val = check_record_file(data_dir, val_name, args.num_classes)

    num_workers, rank = _workers(args.kv_store, kv)
    per_worker = train.num_records // num_workers
    if args.batch_size > per_worker:
        where = f" per worker ({num_workers} workers)" if num_workers > 1 else ""
        raise ConfigError(f"--batch-size {args.batch_size} is larger than the {per_worker} "
                          f"training images{where} in {train.rec}")
    if any(v <= 0 for v in args.std_rgb):
        raise ConfigError(f"--std-rgb values must be > 0, got {args.std_rgb}")
    data = DataSpec(
        dataset=dataset, train=train, val=val, batch_size=args.batch_size,
        test_batch_size=min(args.test_batch_size, val.num_records),
        mean_rgb=tuple(args.mean_rgb), std_rgb=tuple(args.std_rgb),
        train_augment=train_augment, val_augment=val_augment, threads=args.data_threads,
        top_k=top_k if args.num_classes > top_k else 0)

    if args.lr_steps is not None and args.lr_step_every is not None:
        raise ConfigError("give either --lr-steps or --lr-step-every, not both")
    lr_steps = () if args.lr_step_every else check_lr_steps(
        args.lr_steps if args.lr_steps is not None else default_lr_steps(args.num_epochs))
    optim = OptimSpec(
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, wd=args.wd,
        num_epochs=args.num_epochs, lr_factor=args.lr_factor, lr_steps=lr_steps,
        lr_step_every=args.lr_step_every or 0)

    if args.load_epoch is not None and not 0 <= args.load_epoch <= args.num_epochs:
        raise ConfigError(f"--load-epoch {args.load_epoch} is outside 0..{args.num_epochs} "
                          "(--num-epochs)")
    prefix = args.model_prefix or os.path.join(
        "runs", dataset, run_name(args.network, net.config), "model")
    log_file = args.log_file or (prefix + (f".rank{rank}" if rank else "") + ".log")
    check_writable(prefix + "-symbol.json", "--model-prefix")
    check_writable(log_file, "--log-file" if args.log_file else "--model-prefix")
    run = RunSpec(
        model_prefix=prefix, pretrained=_check_pretrained(args.pretrained, args.load_epoch),
        freeze=_frozen_names(args.freeze, net), log_file=log_file,
        checkpoint_epochs=args.checkpoint_epochs or max(1, args.num_epochs // 8),
        log_iters=args.log_iters, load_epoch=args.load_epoch, resume=args.resume,
        seed=args.rand_seed if args.rand_seed is not None else int(time.time()) % (2 ** 31),
        seed_given=args.rand_seed is not None, allow_changes=args.allow_changes,
        precise_bn=args.precise_bn)
    return Job(network=net, data=data, optim=optim, run=run, contexts=contexts,
               kv_store=args.kv_store)
