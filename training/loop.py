"""The training loop: fit a resolved Job (resume, checkpoints, per-epoch validation) and
evaluate parameters on the validation set."""
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time

import mxnet as mx
import numpy as np

import network
import utility

from . import precise_bn
from .checkpoint import Checkpoints, verify_params_file, weights_digest
from .data import precise_bn_batches, train_batches, val_iter
from .errors import CheckpointWriteError, ConfigError, TrainingDiverged
from .metrics import Stats, format_values
from .optim import lr_of_epoch, make_initializer, make_lr_scheduler, make_optimizer, upgrade_states
from .params import match_params, read_params, split_params
from .scoring import score_batches

LOGGER = logging.getLogger("igc.train")


class _LogTo:
    """Log to stdout and a file for the duration of a run (safe to nest runs in one process)."""

    def __init__(self, path, rank):
        self.path, self.rank = path, rank

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        node = f"[{self.rank}] " if self.rank else ""
        formatter = logging.Formatter(f"%(asctime)s {node}%(message)s", "%Y-%m-%d %H:%M:%S")
        self.handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(self.path)]
        # Details (every array name of --pretrained) go to the file only.
        self.handlers[0].setLevel(logging.INFO)
        for handler in self.handlers:
            handler.setFormatter(formatter)
            LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.DEBUG)
        LOGGER.propagate = False
        return self

    def __exit__(self, *exc):
        for handler in self.handlers:
            LOGGER.removeHandler(handler)
            handler.close()


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def evaluate(symbol, arg_params, aux_params, job):
    """Loss and accuracy over the whole validation set of `job` (see scoring.score_batches)."""
    values = score_batches(symbol, arg_params, aux_params, val_iter(job), job.network.data_shape,
                           job.data.test_batch_size, job.contexts, job.data.top_k)
    values.pop("images")
    return values


def fit(job, kv=None):
    """Train `job`; returns the per-epoch history (list of dicts) of this run. The writer of the
    checkpoints (rank 0) holds the prefix's lock throughout: one run per prefix."""
    rank = kv.rank if kv is not None else 0
    lock = Checkpoints(job.run.model_prefix).lock() if rank == 0 else contextlib.nullcontext()
    with lock, _LogTo(job.run.log_file, rank):
        return _fit(job, kv, rank)


def _start_point(job, checkpoints):
    """(begin_epoch, (arg, aux, states) or None) from --load-epoch / --resume."""
    run = job.run
    if run.load_epoch is not None:
        return run.load_epoch, checkpoints.load(run.load_epoch) if run.load_epoch else None
    if run.resume:
        epoch, loaded = checkpoints.latest_complete()
        if epoch is None:
            LOGGER.info("--resume: no complete checkpoint at %s; starting from epoch 0",
                        run.model_prefix)
            return 0, None
        LOGGER.info("--resume: continuing from %s", checkpoints.params_path(epoch))
        return epoch, loaded
    return 0, None


def _shown(value):
    if isinstance(value, str) and len(value) == 64:
        return value[:12]  # a SHA-256
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def identity_differences(recorded, current, begin_epoch):
    """['key: recorded -> current', ...] where this command's run differs from the recorded
    one. Learning-rate steps count only where they already applied (before `begin_epoch`): a
    longer --num-epochs may move the later ones."""
    recorded, current = json.loads(json.dumps(recorded)), json.loads(json.dumps(current))
    for identity in (recorded, current):
        identity["lr_steps"] = [s for s in identity.get("lr_steps", []) if s < begin_epoch]
    differences = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += [f"{key}.{k}: {_shown(old.get(k))} -> {_shown(new.get(k))}"
                            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != new:
            differences.append(f"{key}: {_shown(old)} -> {_shown(new)}")
    return differences


def _same_run(job, checkpoints, begin_epoch):
    """`job` after checking that it continues the run that wrote checkpoint `begin_epoch`
    (ConfigError listing the differences, unless --allow-changes), with that run's seed when
    --rand-seed was not given."""
    recorded = checkpoints.run_identity(begin_epoch) if begin_epoch else None
    if recorded is None:
        if begin_epoch and not job.run.seed_given:
            LOGGER.warning("%s records no seed: the data order of this run differs from the "
                           "run's (give its --rand-seed)", checkpoints.params_path(begin_epoch))
        return job
    if not job.run.seed_given and isinstance(recorded.get("seed"), int):
        job = dataclasses.replace(job, run=dataclasses.replace(job.run, seed=recorded["seed"]))
    differences = identity_differences(recorded, job.identity(), begin_epoch)
    if differences and not job.run.allow_changes:
        raise ConfigError(f"this command is not the run of "
                          f"{checkpoints.params_path(begin_epoch)}, it differs in: "
                          f"{'; '.join(differences)} (give --allow-changes to continue "
                          "it anyway)")
    if differences:
        LOGGER.warning("--allow-changes: continuing %s with: %s",
                       checkpoints.params_path(begin_epoch), "; ".join(differences))
    return job


def _tidy_prefix(checkpoints, begin_epoch):
    """Before a run writes under its prefix: drop the temporaries of killed runs, and move a
    later run's checkpoints aside, so that a --resume after this run continues this run."""
    for path in checkpoints.remove_dead_temporaries():
        LOGGER.info("removed %s, left by a run that was killed while saving", path)
    folder = checkpoints.move_aside_after(begin_epoch)
    if folder:
        LOGGER.warning("checkpoints after epoch %d at %s are not continued by this run (an "
                       "earlier run's, or damaged): moved them to %s", begin_epoch,
                       checkpoints.prefix, folder)


def train_step(module, batch):
    """One update of `module` on `batch`; returns the class probabilities of its forward pass
    (before the update), as a numpy array."""
    module.forward_backward(batch)
    module.update()
    return module.get_outputs()[0].asnumpy()


def _train_epoch(module, job, epoch, steps, num_workers, rank):
    """One epoch of updates; logs every job.run.log_iters batches; returns the epoch's Stats."""
    stats, window = Stats(job.data.top_k), Stats(job.data.top_k)
    window_tic = time.time()
    for nbatch, batch in enumerate(train_batches(job, epoch, steps, num_workers, rank), 1):
        probs = train_step(module, batch)
        labels = batch.label[0].asnumpy()
        loss = stats.update(probs, labels)
        window.update(probs, labels)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training loss is {loss} at epoch {epoch + 1}, batch {nbatch}: the network "
                "diverged (try a lower --lr); checkpoints so far are kept")
        if nbatch % job.run.log_iters == 0:
            speed = window.count / max(time.time() - window_tic, 1e-9)
            LOGGER.info("Epoch[%d] Batch[%d/%d] speed=%.1f img/s %s", epoch + 1, nbatch, steps,
                        speed, format_values("train", window.values()))
            window.reset()
            window_tic = time.time()
    return stats


def _pretrained_params(job, symbol):
    """(arg_params, aux_params) of --pretrained that fit `symbol` by name and shape; logs what
    was loaded, what will be initialised and what in the file is unused."""
    path = job.run.pretrained
    verify_params_file(path)
    match = match_params(symbol, (1,) + tuple(job.network.data_shape),
                         *split_params(read_params(path, "--pretrained"), symbol))
    if not match.loaded:
        raise ConfigError(f"--pretrained {path}: no array fits network {job.network.name} "
                          f"({match.problems()})")
    initialised = list(match.missing) + [name for name, _, _ in match.mismatched]
    fresh = [f"{n} (file {f}, network {g})" for n, f, g in match.mismatched] + \
        list(match.missing)
    LOGGER.info("--pretrained %s: loaded %d arrays, initialised %d%s, %d in the file unused "
                "(names in the log file)", path, len(match.loaded), len(initialised),
                f" ({' '.join(fresh)})" if 0 < len(fresh) <= 4 else "", len(match.unused))
    LOGGER.debug("--pretrained %s: loaded %d arrays: %s", path, len(match.loaded),
                 " ".join(match.loaded))
    if fresh:
        LOGGER.debug("--pretrained: initialised %d arrays: %s", len(fresh), " ".join(fresh))
    if match.unused:
        LOGGER.debug("--pretrained: unused in the file %d arrays: %s", len(match.unused),
                     " ".join(match.unused))
    total = len(match.loaded) + len(initialised)
    if len(match.loaded) < total / 2:
        LOGGER.warning("--pretrained %s: WARNING only %d of the %d arrays of network %s come "
                       "from it; is it a checkpoint of another network?", path,
                       len(match.loaded), total, job.network.name)
    return match.arg_params, match.aux_params


def _bind_training_module(job, symbol, loaded, dtype):
    """A Module bound for training, its parameters initialised or taken from `loaded` (a
    checkpoint being continued) or, on a fresh start, from --pretrained where they fit."""
    net, batch_size = job.network, job.data.batch_size
    # The executor runs the fused graph; names, parameters and checkpoints are the symbol's.
    module = mx.mod.Module(network.fuse_input_batchnorms(symbol), data_names=("data",),
                           label_names=("softmax_label",),
                           context=list(job.contexts), logger=LOGGER,
                           fixed_param_names=list(job.run.freeze) or None)
    module.bind(data_shapes=[mx.io.DataDesc("data", (batch_size,) + net.data_shape, dtype)],
                label_shapes=[mx.io.DataDesc("softmax_label", (batch_size,), dtype)])
    arg_params, aux_params, _ = loaded if loaded else (None, None, None)
    if loaded:
        match = match_params(symbol, (1,) + tuple(net.data_shape), arg_params, aux_params)
        if not match.complete:
            raise ConfigError(f"the checkpoint does not fit network {net.name} {net.config}: "
                              f"{match.problems()}")
    partial = loaded is None and job.run.pretrained is not None
    if partial:
        arg_params, aux_params = _pretrained_params(job, symbol)
    elif loaded and job.run.pretrained:
        LOGGER.info("--pretrained %s not used: continuing a checkpoint", job.run.pretrained)
    if job.run.freeze:
        fresh = [n for n in job.run.freeze if n not in (arg_params or {})]
        LOGGER.info("--freeze: %d arguments kept fixed%s", len(job.run.freeze),
                    f"; {len(fresh)} of them freshly initialised: {' '.join(fresh)}"
                    if fresh else "")
    try:
        module.init_params(make_initializer(), arg_params=arg_params, aux_params=aux_params,
                           allow_missing=partial)
    except (RuntimeError, AssertionError, mx.base.MXNetError) as err:
        raise ConfigError(f"checkpoint does not match network {net.name} {net.config}: {err}") \
            from None
    return module


def build_trainer(job, symbol, loaded, steps, kv=None, begin_epoch=0, dtype="float32"):
    """(module, lr scheduler): the Module bound for training with the job's initialisation (or
    `loaded` weights) and its optimizer installed: the authors' update rule, weight-decay rule
    and learning-rate schedule at `steps` updates per epoch, counting from `begin_epoch`.
    Training is float32; the parity tests also run it in float64."""
    optim = job.optim
    num_workers = kv.num_workers if kv is not None else 1
    module = _bind_training_module(job, symbol, loaded, dtype)
    sync = kv is not None and "dist" in kv.type and "_sync" in kv.type
    scheduler = make_lr_scheduler(optim.lr, optim.lr_factor, steps, optim.lr_steps,
                                  optim.lr_step_every)
    param_names = [n for n in symbol.list_arguments() if n not in ("data", "softmax_label")]
    optimizer = make_optimizer(
        optim.optimizer, param_names, learning_rate=optim.lr, momentum=optim.momentum,
        wd=optim.wd, rescale_grad=1.0 / (job.data.batch_size * (num_workers if sync else 1)),
        lr_scheduler=scheduler, begin_num_update=begin_epoch * steps)
    module.init_optimizer(kvstore=kv if kv is not None else job.kv_store, optimizer=optimizer)
    return module, scheduler


def _precise_bn(module, symbol, job, epoch, num_workers, rank):
    """The module's BatchNorm running statistics recomputed from job.run.precise_bn training
    batches (training/precise_bn.py); they are what validation reads and the checkpoint keeps."""
    arg_params, aux_params = module.get_params()
    batches = precise_bn_batches(job, epoch, num_workers, rank)
    aux_params = precise_bn.recompute(symbol, arg_params, aux_params, batches, job.contexts[0],
                                      job.run.precise_bn)
    module.set_params(arg_params, aux_params)


def _fit(job, kv, rank):
    num_workers = kv.num_workers if kv is not None else 1
    checkpoints = Checkpoints(job.run.model_prefix)
    begin_epoch, loaded = _start_point(job, checkpoints)
    job = _same_run(job, checkpoints, begin_epoch)
    net, optim, run = job.network, job.optim, job.run
    LOGGER.info("configuration:")
    for group, values in job.describe().items():
        LOGGER.info("  %s: %s", group, " ".join(f"{k}={json.dumps(v, default=str)}"
                                                for k, v in values.items())
                    if isinstance(values, dict) else json.dumps(values, default=str))
    if begin_epoch >= optim.num_epochs:
        LOGGER.info("nothing to do: %d of %d epochs already done", begin_epoch, optim.num_epochs)
        return []
    if rank == 0:
        _tidy_prefix(checkpoints, begin_epoch)
    late = [s for s in optim.lr_steps if s >= optim.num_epochs]
    if late:
        LOGGER.warning("--lr-steps %s: not before the last epoch (--num-epochs %d), so they "
                       "apply only when this run is continued further with --resume",
                       ",".join(map(str, late)), optim.num_epochs)

    mx.random.seed(run.seed)
    np.random.seed(run.seed)
    symbol = net.symbol()
    LOGGER.info("network %s %s: %d parameters", net.name, net.config,
                utility.count_params(symbol, (1,) + tuple(net.data_shape))["total"])

    steps = (job.data.train.num_records // num_workers) // job.data.batch_size
    module, scheduler = build_trainer(job, symbol, loaded, steps, kv, begin_epoch)
    # Under a dist kvstore the optimizer state lives on the servers and cannot be saved.
    local_states = kv is None
    states = loaded[2] if loaded else None
    if states and local_states:
        module.load_optimizer_states(states)
        if optim.optimizer == "nag" and upgrade_states(
                module, lr_of_epoch(scheduler, optim.lr, begin_epoch - 1, steps)):
            LOGGER.info("momentum of %s converted from MXNet's 'nag' form to the authors' form",
                        states)
    elif loaded and not states and begin_epoch:
        LOGGER.warning("no optimizer state saved with epoch %d: momentum restarts from zero",
                       begin_epoch)

    LOGGER.info("training epochs %d..%d, %d batches of %d per epoch%s", begin_epoch + 1,
                optim.num_epochs, steps, job.data.batch_size,
                f" on each of {num_workers} workers" if num_workers > 1 else "")
    history = []
    run_start = time.time()
    for epoch in range(begin_epoch, optim.num_epochs):
        tic = time.time()
        stats = _train_epoch(module, job, epoch, steps, num_workers, rank)
        train_time = time.time() - tic
        ema = None
        if run.precise_bn:
            ema = evaluate(symbol, *module.get_params(), job)
            _precise_bn(module, symbol, job, epoch, num_workers, rank)
        val = evaluate(symbol, *module.get_params(), job)
        elapsed = time.time() - tic
        lr = lr_of_epoch(scheduler, optim.lr, epoch, steps)
        done = epoch + 1 - begin_epoch
        eta = (time.time() - run_start) / done * (optim.num_epochs - epoch - 1)
        record = {"epoch": epoch + 1, "lr": lr, "time": elapsed,
                  **{f"train-{k}": v for k, v in stats.values().items()},
                  **{f"val-{k}": v for k, v in val.items()}}
        if ema is not None:
            record.update({f"val-ema-{k}": v for k, v in ema.items()})
            LOGGER.info("Epoch[%d] with the moving-average BatchNorm statistics of training "
                        "instead: %s", epoch + 1, format_values("val", ema))
        history.append(record)
        LOGGER.info("Epoch[%d/%d] %s %s lr=%g speed=%.1f img/s time=%.1fs eta=%s", epoch + 1,
                    optim.num_epochs, format_values("train", stats.values()),
                    format_values("val", val), lr, stats.count / max(train_time, 1e-9),
                    elapsed, _clock(eta))
        last = epoch + 1 == optim.num_epochs
        if rank == 0 and ((epoch + 1) % run.checkpoint_epochs == 0 or last):
            checkpoints.save(epoch + 1, symbol, module, with_states=local_states,
                             model_info=job.model_info(), identity=job.identity())
            LOGGER.info("saved checkpoint %s", checkpoints.params_path(epoch + 1))
    LOGGER.info("finished %d epoch%s in %s; weights digest %s", optim.num_epochs,
                "" if optim.num_epochs == 1 else "s",
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
    except (TrainingDiverged, CheckpointWriteError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
