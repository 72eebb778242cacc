"""The authors' optimiser, weight-decay rule, learning-rate schedule and initialisation."""
import copy

import mxnet as mx
import numpy
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
    rate for a while, and with out=weight its decay term reads the already-updated weight.
    This runs MXNet's fused nag_mom_update without its decay (added to the gradient first) and
    rescales the stored momentum when the rate changes, which is the form above exactly. Like
    MXNet's own optimizers, the fused op takes lr and momentum as float32.

    The state is [-lr * mom, lr]: the momentum as MXNet's op keeps it and the rate it was scaled
    with. MXNet's own 'nag' stores the first of these alone (`upgrade_states`)."""

    def __init__(self, momentum=0.0, **kwargs):
        super().__init__(**kwargs)
        if self.clip_gradient is not None:
            raise ValueError("AuthorsNAG does not clip gradients")
        self.momentum = momentum

    def create_state(self, index, weight):
        if self.momentum == 0.0:
            return None
        return [nd.zeros(weight.shape, weight.context, dtype=weight.dtype), None]

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        if wd:
            # grad += wd / rescale_grad * weight in one pass: sgd_update's weight - lr * grad
            # with the arrays swapped and a negative rate.
            nd.sgd_update(grad, weight, out=grad, lr=-wd / self.rescale_grad, wd=0.0,
                          rescale_grad=1.0)
        if state is None:
            nd.sgd_update(weight, grad, out=weight, lr=lr, wd=0.0,
                          rescale_grad=self.rescale_grad)
            return
        mom, scaled_at = state
        if scaled_at is not None and scaled_at != lr:
            mom *= lr / scaled_at
        state[1] = lr
        nd.nag_mom_update(weight, grad, mom, out=weight, lr=lr, wd=0.0, momentum=self.momentum,
                          rescale_grad=self.rescale_grad)


@mx.optimizer.register
class IGCSGD(mx.optimizer.SGD):
    """MXNet's SGD ('sgd'), the same update bit for bit, with momentum on float32 CPU arrays in one
    call of the plugin's IGCSGDMomUpdate over all of them (one parallel loop over chunks of every
    array), where MXNet's multi_sgd_mom_update takes four arrays per call (MXNet's limit is 60)
    and runs over the longest one's length testing each array's bound per index: on
    mobilenetv2_cifar's 2.24 M parameters 7.0-7.8 ms per step on 1 thread (docs/performance.md).
    Anything else (no momentum, float16 or float64, sparse arrays, a GPU, the plugin not loaded)
    goes to MXNet's own update, as many arrays per call as MXNet takes. The state is SGD's
    momentum array, so checkpoints of either load in the other."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stock_aggregate_num = self.aggregate_num
        self.aggregate_num = 1 << 20  # the Updater hands over every array at once
        self._fusable_for = None  # (array handles, whether the op takes them)

    def __getstate__(self):  # (handles mean nothing in another process: a dist server's)
        state = super().__getstate__()
        state["_fusable_for"] = None
        return state

    def _fused(self, weights, grads, states, multi_precision):
        if multi_precision or self.momentum <= 0 or not hasattr(nd, "IGCSGDMomUpdate"):
            return False
        arrays = (*weights, *grads, *states)
        if any(a is None for a in arrays):
            return False
        # An array's storage, dtype and device never change: they are read once per set of
        # arrays (for 474 arrays about 1.2 ms, a third of the fused update, if read every step).
        handles = tuple(a.handle.value for a in arrays)
        if self._fusable_for is None or self._fusable_for[0] != handles:
            self._fusable_for = (handles, all(
                a.stype == "default" and a.dtype == numpy.float32 and
                a.context.device_type == "cpu" for a in arrays))
        return self._fusable_for[1]

    def _update_impl(self, indices, weights, grads, states, multi_precision=False):
        if not isinstance(indices, (tuple, list)):
            super()._update_impl(indices, weights, grads, states, multi_precision)
            return
        if not self._fused(weights, grads, states, multi_precision):
            step = max(1, min(self.stock_aggregate_num, 60))
            for i in range(0, len(indices), step):
                super()._update_impl(indices[i:i + step], weights[i:i + step],
                                     grads[i:i + step], states[i:i + step], multi_precision)
            return
        self._update_count(indices)
        kwargs = {"rescale_grad": self.rescale_grad, "momentum": self.momentum}
        if self.clip_gradient:
            kwargs["clip_gradient"] = self.clip_gradient
        nd.IGCSGDMomUpdate(*[a for triple in zip(weights, grads, states) for a in triple],
                           out=list(weights), num_weights=len(weights),
                           lrs=self._get_lrs(indices), wds=self._get_wds(indices), **kwargs)


def upgrade_states(module, lr):
    """Momentum saved by MXNet's own 'nag' (an older checkpoint of this project: a bare array
    of -lr * mom, the form AuthorsNAG keeps too) given the rate `lr` it was scaled with. Reaches
    into the Module's updater (MXNet offers no public handle); a no-op for other states."""
    kvstore = getattr(module, "_kvstore", None)
    updater = getattr(module, "_updater", None) or getattr(kvstore, "_updater", None)
    if updater is None:
        return 0
    converted = 0
    for index, state in list(updater.states.items()):
        if isinstance(state, nd.NDArray):
            updater.states[index] = [state, lr]
            converted += 1
    return converted


def make_optimizer(name, param_names, *, learning_rate, momentum, wd, rescale_grad,
                   lr_scheduler=None, begin_num_update=0):
    """Nesterov ('nag': AuthorsNAG, the authors' form) or MXNet's SGD ('sgd': IGCSGD, the same
    update in one call over all the arrays) with weight decay
    on every *_weight, *_bias, *_gamma and *_beta and none on anything else. Explicit per-name
    multipliers, so MXNet's default (weights and gammas only) never applies; they travel with
    the optimizer to dist servers."""
    params = dict(learning_rate=learning_rate, wd=wd, momentum=momentum,
                  rescale_grad=rescale_grad, begin_num_update=begin_num_update)
    if lr_scheduler is not None:
        params["lr_scheduler"] = lr_scheduler
    optimizer = mx.optimizer.create({"nag": "authorsnag", "sgd": "igcsgd"}.get(name, name),
                                    **params)
    optimizer.set_wd_mult({name: 1.0 if name.endswith(DECAYED_SUFFIXES) else 0.0
                           for name in param_names})
    return optimizer
