"""The authors' optimiser, weight-decay rule, learning-rate schedule and initialisation."""
import copy

import mxnet as mx
from mxnet import ndarray as nd

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


@mx.optimizer.register
class AuthorsNAG(mx.optimizer.Optimizer):
    """Nesterov momentum as the authors' MXNet (2017) ran it, and as PyTorch's
    SGD(nesterov=True) runs it:

        g = rescale_grad * grad + wd * weight
        mom = momentum * mom + g
        weight -= lr * (g + momentum * mom)

    MXNet 1.9's 'nag' (rewritten in 2019, apache/mxnet#16053) keeps the learning rate inside the
    momentum, so after a learning-rate drop the old momentum still moves the weights at the old
    rate for a while, and with out=weight its decay term reads the already-updated weight. The
    state is a 1-tuple (mom,), which tells it apart from a state that MXNet's 'nag' wrote
    (`upgrade_states`)."""

    def __init__(self, momentum=0.0, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def create_state(self, index, weight):
        if self.momentum == 0.0:
            return None
        return (nd.zeros(weight.shape, weight.context, dtype=weight.dtype),)

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        g = grad * self.rescale_grad
        if self.clip_gradient is not None:
            g = nd.clip(g, -self.clip_gradient, self.clip_gradient)
        g += wd * weight
        if state is None:
            weight[:] -= lr * g
            return
        mom = state[0]
        mom[:] *= self.momentum
        mom[:] += g
        g += self.momentum * mom
        weight[:] -= lr * g


def upgrade_states(module, lr):
    """Momentum saved by MXNet's own 'nag' (an older checkpoint of this project: a bare array
    holding about -lr * mom) turned into AuthorsNAG's (mom,) at the current rate `lr`. Reaches
    into the Module's updater (MXNet offers no public handle); a no-op for other states."""
    kvstore = getattr(module, "_kvstore", None)
    updater = getattr(module, "_updater", None) or getattr(kvstore, "_updater", None)
    if updater is None:
        return 0
    converted = 0
    for index, state in list(updater.states.items()):
        if isinstance(state, nd.NDArray):
            updater.states[index] = (state * (-1.0 / lr),)
            converted += 1
    return converted


def make_optimizer(name, param_names, *, learning_rate, momentum, wd, rescale_grad,
                   lr_scheduler=None, begin_num_update=0):
    """Nesterov ('nag': AuthorsNAG, the authors' form) or MXNet's SGD ('sgd') with weight decay
    on every *_weight, *_bias, *_gamma and *_beta and none on anything else. Explicit per-name
    multipliers, so MXNet's default (weights and gammas only) never applies; they travel with
    the optimizer to dist servers."""
    params = dict(learning_rate=learning_rate, wd=wd, momentum=momentum,
                  rescale_grad=rescale_grad, begin_num_update=begin_num_update)
    if lr_scheduler is not None:
        params["lr_scheduler"] = lr_scheduler
    optimizer = mx.optimizer.create("authorsnag" if name == "nag" else name, **params)
    optimizer.set_wd_mult({name: 1.0 if name.endswith(DECAYED_SUFFIXES) else 0.0
                           for name in param_names})
    return optimizer
