"""Independent numpy references that the tests compare the project against (one of each).

The pure-symbol permutation is `network.layers.permute(..., "reshape")`, the project's second
implementation of the same meaning; these are plain loops and matrices written from the papers'
definitions (IGCV1, arXiv:1707.02725), so they share no code with either.
"""
import numpy as np


def reorder(x, g):
    """The permutation Reorder(g) written out: out[:, j*g + i] = in[:, i*(C/g) + j]."""
    c = x.shape[1]
    k = c // g
    out = np.empty_like(x)
    for i in range(g):
        for j in range(k):
            out[:, j * g + i] = x[:, i * k + j]
    return out


def permutation_matrix(channels, groups):
    """P with (P x)[j*g + i] = x[i*(C/g) + j]: Reorder(g) as a matrix acting on channels."""
    p = np.zeros((channels, channels))
    for i in range(groups):
        for j in range(channels // groups):
            p[j * groups + i, i * (channels // groups) + j] = 1
    return p


def block_diagonal(weight, groups):
    """Dense (C_out, C_in, k, k) kernel of a grouped conv weight (C_out, C_in/groups, k, k)."""
    c_out, c_in_g = weight.shape[:2]
    dense = np.zeros((c_out, c_in_g * groups) + weight.shape[2:], weight.dtype)
    per_group = c_out // groups
    for g in range(groups):
        dense[g * per_group:(g + 1) * per_group, g * c_in_g:(g + 1) * c_in_g] = \
            weight[g * per_group:(g + 1) * per_group]
    return dense


def igc_unit_kernel(w1, L, w2, M):
    """The dense k x k kernel of an IGC unit, P_M W2 P_L W1 (the IGCV1 paper: primary group conv
    with L groups, Reorder(L), 1x1 secondary group conv with M groups, Reorder(M))."""
    channels = w1.shape[0]
    mix = permutation_matrix(channels, M) @ block_diagonal(w2, M)[:, :, 0, 0] @ \
        permutation_matrix(channels, L)
    return np.einsum("oc,cikl->oikl", mix, block_diagonal(w1, L))


def batchnorm_training(x, gamma, beta, eps, act=None):
    """BatchNorm over axis 1 with the batch's statistics (biased variance), then the activation
    ('relu', 'relu6' = clip to [0, 6], or None): (out, batch mean, batch variance)."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    out = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    out = out * gamma.reshape(shape) + beta.reshape(shape)
    return activate(out, act), mean, var


def batchnorm_inference(x, gamma, beta, moving_mean, moving_var, eps, act=None):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = gamma / np.sqrt(moving_var + eps)
    out = x * scale.reshape(shape) + (beta - moving_mean * scale).reshape(shape)
    return activate(out, act)


def activate(x, act):
    if act is None:
        return x
    return np.clip(x, 0, 6) if act == "relu6" else np.maximum(x, 0)
