"""A PyTorch peer configured to train as the project's MXNet training does (the authors' MXNet
semantics), so that the two can be compared step for step (tests/test_training_parity.py) and on
real data (benchmarks/training_parity.py). Each difference between PyTorch's defaults and the
authors' MXNet behaviour that this module closes is listed in docs/reproduce.md.

- `match_batchnorm`: MXNet's BatchNorm keeps the *biased* batch variance in its running variance
  (PyTorch keeps the unbiased one); momentum and eps are already translated by `common.batchnorm`.
- `make_optimizer`: the project's 'nag' (the authors' Nesterov form) equals PyTorch's
  SGD(nesterov=True) with weight decay on every parameter (the authors decay biases and BN
  gamma/beta too) and float32 rate and momentum; MXNet's 'sgd' folds the learning rate into
  the momentum buffer, so it is its own class here.
- `lr_at`: MXNet's MultiFactorScheduler, counted in updates (the first update of epoch s, 0-based,
  takes the lowered rate when s is a step).
- `init_like_mxnet`: the authors' initialisation (Xavier 'in': gaussian magnitude 2 for
  convolutions, uniform magnitude 1 for the classifier; biases and betas 0, gammas 1).
"""
import math

import numpy as np
import torch
from torch import nn


class MXNetBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose running variance follows MXNet: the biased batch variance."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        with torch.no_grad():
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=False)
            self.running_mean.mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(var, alpha=self.momentum)
        return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0,
                                        self.eps)


def match_batchnorm(module):
    """Every nn.BatchNorm2d of `module` replaced in place by MXNetBatchNorm2d (same parameters,
    buffers and registration order); returns `module`. MXNet holds a BatchNorm's momentum as a
    float32 (its eps as a double): the twin's momentum is rounded alike."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            momentum = 1.0 - float(np.float32(1.0 - child.momentum))
            twin = MXNetBatchNorm2d(child.num_features, eps=child.eps, momentum=momentum,
                                    dtype=child.weight.dtype)
            twin.load_state_dict(child.state_dict())
            setattr(module, name, twin)
        else:
            match_batchnorm(child)
    return module


def batchnorms(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def copy_mxnet_weights(module, args, aux):
    """MXNet arguments (name -> numpy, in the graph's argument order) onto the peer's parameters
    and BN running statistics onto its BN buffers, by position; every shape must agree."""
    params = list(module.parameters())
    assert len(params) == len(args), f"{len(params)} parameters, {len(args)} MXNet arguments"
    with torch.no_grad():
        for param, (name, value) in zip(params, args.items()):
            assert tuple(param.shape) == tuple(value.shape), name
            param.copy_(torch.from_numpy(np.asarray(value)))
        bns, stats = batchnorms(module), list(aux.items())
        assert len(stats) == 2 * len(bns), f"{len(bns)} BatchNorms, {len(stats)} MXNet states"
        for bn, (mean_name, mean), (var_name, var) in zip(bns, stats[0::2], stats[1::2]):
            assert mean_name.endswith("_moving_mean") and var_name.endswith("_moving_var")
            bn.running_mean.copy_(torch.from_numpy(np.asarray(mean)))
            bn.running_var.copy_(torch.from_numpy(np.asarray(var)))


def peer_weights(module, arg_names, aux_names):
    """The peer's parameters and BN running statistics as MXNet-named numpy arrays (the inverse
    of `copy_mxnet_weights`)."""
    args = {name: p.detach().numpy().copy() for name, p in zip(arg_names, module.parameters())}
    stats = []
    for bn in batchnorms(module):
        stats += [bn.running_mean, bn.running_var]
    aux = {name: s.detach().numpy().copy() for name, s in zip(aux_names, stats)}
    return args, aux


class MXNetSGD(torch.optim.Optimizer):
    """MXNet's 'sgd' with momentum: state = momentum * state - lr * (grad + wd * weight);
    weight += state. The learning rate is folded into the state, so after a learning-rate drop
    the old momentum keeps its old rate (PyTorch's SGD rescales the whole buffer). MXNet's
    sgd_mom_update takes lr, wd and momentum as float32: so does this."""

    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "mom" not in state:
                    state["mom"] = torch.zeros_like(p)
                mom = state["mom"]
                lr, wd, momentum = (float(np.float32(group[k]))
                                    for k in ("lr", "weight_decay", "momentum"))
                mom.mul_(momentum).add_(p.grad + wd * p, alpha=-lr)
                p.add_(mom)


class Float32Rate(torch.optim.SGD):
    """PyTorch's SGD(nesterov=True), the authors' Nesterov form, with the rate and momentum
    rounded to float32 as MXNet's fused update ops take them."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            exact = group["lr"], group["momentum"]
            group["lr"], group["momentum"] = (float(np.float32(v)) for v in exact)
            try:
                super().step()
            finally:
                group["lr"], group["momentum"] = exact


def make_optimizer(module, optimizer, lr, momentum, wd):
    """The PyTorch optimizer that updates as the project's `optimizer` ('nag' or 'sgd') with
    the authors' weight-decay rule (every parameter decayed)."""
    if optimizer == "nag":
        return Float32Rate(module.parameters(), lr=lr, momentum=momentum, nesterov=True,
                           weight_decay=wd)
    if optimizer == "sgd":
        return MXNetSGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {optimizer!r}")


def lr_at(update, lr, factor, boundaries):
    """The learning rate of update number `update` (1-based): lr times factor for each boundary
    (in updates) that `update` is past."""
    return lr * factor ** sum(1 for b in boundaries if update > b)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def init_like_mxnet(module, generator=None):
    """The authors' initialisation (training/optim.py make_initializer) on a peer: fan_in counts
    the input channels of one group times the kernel area, as MXNet's Xavier does."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, math.sqrt(2.0 / fan_in), generator=generator)
            elif isinstance(m, nn.Linear):
                bound = math.sqrt(1.0 / m.in_features)
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1)
    return module
