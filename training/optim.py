"""The authors' optimiser, weight-decay rule, learning-rate schedule and initialisation."""
import copy

import mxnet as mx

# The authors decay every learnable array: MXNet's default rule would skip biases and betas.
DECAYED_SUFFIXES = ("_weight", "_bias", "_gamma", "_beta")


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
