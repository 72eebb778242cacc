"""IGCSGD (training/optim.py, what `--optimizer sgd` trains with) and the plugin's
IGCSGDMomUpdate: MXNet's SGD with momentum, the same bits, in one call over all the arrays;
MXNet's own update wherever the op does not apply; bad attributes as one-line errors."""
import mxnet as mx
import numpy as np
import pytest

import training
from training.optim import IGCSGD

# Around the kernel's 16384-value chunks, and more values than one thread's share.
SIZES = [1, 7, 100, 16384, 16385, 50000, 300000]


def random_arrays(rng, sizes):
    return ([mx.nd.array(rng.normal(0, 1, s)) for s in sizes],
            [mx.nd.array(rng.normal(0, 3, s)) for s in sizes],
            [mx.nd.array(rng.normal(0, 0.1, s)) for s in sizes])


def check_op(clip):
    """IGCSGDMomUpdate against MXNet's multi_sgd_mom_update on copies of the same arrays."""
    rng = np.random.RandomState(0)
    lrs = [float(v) for v in rng.uniform(0.001, 0.2, len(SIZES))]
    wds = [float(v) for v in rng.uniform(0, 1e-3, len(SIZES))]
    weights, grads, moms = random_arrays(rng, SIZES)
    ours_w, ours_m = [w.copy() for w in weights], [m.copy() for m in moms]
    kwargs = dict(momentum=0.9, rescale_grad=1 / 64, num_weights=len(SIZES), lrs=lrs, wds=wds)
    if clip is not None:
        kwargs["clip_gradient"] = clip
    mx.nd.multi_sgd_mom_update(*[a for t in zip(weights, grads, moms) for a in t], out=weights,
                               **kwargs)
    mx.nd.IGCSGDMomUpdate(*[a for t in zip(ours_w, grads, ours_m) for a in t], out=ours_w,
                          **kwargs)
    for i, size in enumerate(SIZES):
        want_w, want_m = weights[i].asnumpy(), moms[i].asnumpy()
        assert np.abs(want_m).max() > 0
        np.testing.assert_array_equal(ours_w[i].asnumpy(), want_w, err_msg=f"weight {size}")
        np.testing.assert_array_equal(ours_m[i].asnumpy(), want_m, err_msg=f"momentum {size}")


@pytest.mark.parametrize("clip", [None, 0.05], ids=["no-clip", "clip"])
def test_op_equals_mxnets_multi_sgd_mom_update_bit_for_bit(ops, clip):
    check_op(clip)


@pytest.mark.parametrize("threads", [1, 3])
def test_op_does_not_depend_on_the_thread_count(run_on_threads, threads):
    run_on_threads("test_optim", "t.check_op(None); t.check_op(0.05)", threads)


def small_module(optimizer, dtype="float32"):
    data = mx.sym.var("data")
    net = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), pad=(1, 1), name="conv")
    net = mx.sym.BatchNorm(net, fix_gamma=False, name="bn")
    net = mx.sym.FullyConnected(mx.sym.relu(net), num_hidden=5, name="fc")
    symbol = mx.sym.SoftmaxOutput(net, name="softmax")
    mod = mx.mod.Module(symbol, context=mx.cpu())
    mod.bind(data_shapes=[mx.io.DataDesc("data", (4, 3, 6, 6), dtype)],
             label_shapes=[mx.io.DataDesc("softmax_label", (4,), dtype)])
    mx.random.seed(0)
    mod.init_params(mx.init.Xavier())
    mod.init_optimizer(optimizer=optimizer)
    return mod, [n for n in symbol.list_arguments() if n not in ("data", "softmax_label")]


def train(mod, steps, dtype="float32"):
    rng = np.random.RandomState(1)
    for _ in range(steps):
        mod.forward_backward(mx.io.DataBatch(
            [mx.nd.array(rng.normal(0, 1, (4, 3, 6, 6)), dtype=dtype)],
            [mx.nd.array(rng.randint(0, 5, 4), dtype=dtype)]))
        mod.update()
    return ({k: v.asnumpy() for k, v in mod.get_params()[0].items()},
            {i: s.asnumpy() for i, s in mod._updater.states.items()})


def optimizers(names, clip=None, schedule=True):
    """(IGCSGD as make_optimizer('sgd') builds it, MXNet's SGD with the same settings)."""
    def scheduler():
        return mx.lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.1) if schedule \
            else None
    ours = training.make_optimizer("sgd", names, learning_rate=0.1, momentum=0.9, wd=1e-3,
                                   rescale_grad=0.25, lr_scheduler=scheduler())
    kwargs = dict(learning_rate=0.1, momentum=0.9, wd=1e-3, rescale_grad=0.25)
    if schedule:
        kwargs["lr_scheduler"] = scheduler()
    if clip is not None:
        ours.clip_gradient = kwargs["clip_gradient"] = clip
    stock = mx.optimizer.create("sgd", **kwargs)
    stock.set_wd_mult(dict(ours.wd_mult))
    return ours, stock


@pytest.mark.parametrize("clip", [None, 0.01], ids=["no-clip", "clip"])
def test_module_training_equals_mxnets_sgd_and_takes_one_call(ops, clip, monkeypatch):
    """Five updates (with a learning-rate drop, weight decay on some arrays only, gradient
    clipping) give MXNet's SGD's weights and momenta exactly, each update one op call over
    every array."""
    names = small_module("sgd")[1]
    ours, stock = optimizers(names, clip)
    assert isinstance(ours, IGCSGD)
    calls = []
    op = mx.nd.IGCSGDMomUpdate
    monkeypatch.setattr(mx.nd, "IGCSGDMomUpdate",
                        lambda *a, **k: calls.append(k["num_weights"]) or op(*a, **k))
    got_w, got_s = train(small_module(ours)[0], 5)
    want_w, want_s = train(small_module(stock)[0], 5)
    assert calls == [len(names)] * 5
    for name, value in want_w.items():
        np.testing.assert_array_equal(got_w[name], value, err_msg=name)
    assert sorted(got_s) == sorted(want_s)
    for index, value in want_s.items():
        np.testing.assert_array_equal(got_s[index], value, err_msg=str(index))


def test_what_the_op_does_not_take_goes_to_mxnets_update(ops):
    """float64 arrays (and more of them than MXNet's 60 per call) and no momentum: MXNet's own
    update, the same results as MXNet's SGD."""
    rng = np.random.RandomState(2)
    sizes = list(rng.randint(1, 50, 70))
    for dtype, momentum in (("float64", 0.9), ("float32", 0.0)):
        results = []
        for cls in (IGCSGD, mx.optimizer.SGD):
            opt = cls(learning_rate=0.05, momentum=momentum, wd=1e-3, rescale_grad=0.5)
            rng = np.random.RandomState(3)
            weights = [mx.nd.array(rng.normal(0, 1, s), dtype=dtype) for s in sizes]
            grads = [mx.nd.array(rng.normal(0, 1, s), dtype=dtype) for s in sizes]
            states = [opt.create_state(i, w) for i, w in enumerate(weights)]
            updater = mx.optimizer.get_updater(opt)
            updater.states = dict(enumerate(states))
            updater.states_synced = dict.fromkeys(range(len(sizes)), True)
            updater(list(range(len(sizes))), grads, weights)
            results.append([w.asnumpy() for w in weights])
        for got, want in zip(*results):
            np.testing.assert_array_equal(got, want)


def test_states_saved_by_mxnets_sgd_continue_under_igcsgd(ops, tmp_path):
    """The momentum MXNet's SGD saved (a checkpoint's .states) loads into IGCSGD, and two more
    updates equal MXNet's (at a constant rate)."""
    names = small_module("sgd")[1]
    ours, stock = optimizers(names, schedule=False)
    old, _ = small_module(stock)
    train(old, 2)
    old.save_optimizer_states(str(tmp_path / "sgd.states"))
    new, _ = small_module(ours)
    new.set_params(*old.get_params())
    new.load_optimizer_states(str(tmp_path / "sgd.states"))
    assert {i: s.asnumpy().sum() for i, s in new._updater.states.items()} == \
        {i: s.asnumpy().sum() for i, s in old._updater.states.items()}
    want = train(old, 2)[0]
    got = train(new, 2)[0]
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lrs=[0.1], wds=[0.0, 0.0]), "attribute 'lrs' has 1 values for num_weights=2"),
    (dict(lrs=[0.1, "x"], wds=[0.0, 0.0]), "attribute 'lrs' must be a list of numbers"),
    (dict(lrs=[0.1, 0.1], wds=[0.0, 0.0], momentum="fast"),
     "attribute 'momentum' must be a number, got 'fast'"),
])
def test_bad_attributes_are_one_line_errors(ops, kwargs, message):
    arrays = [mx.nd.ones(3) for _ in range(6)]
    kwargs = dict(dict(momentum=0.9), **kwargs)
    with pytest.raises(mx.base.MXNetError) as err:
        mx.nd.IGCSGDMomUpdate(*arrays, out=[arrays[0], arrays[3]], num_weights=2, **kwargs)
        mx.nd.waitall()
    assert message in str(err.value)


def test_float64_arrays_are_refused_by_name(ops):
    arrays = [mx.nd.ones(3, dtype="float64") for _ in range(3)]
    with pytest.raises(mx.base.MXNetError) as err:
        mx.nd.IGCSGDMomUpdate(*arrays, out=[arrays[0]], num_weights=1, lrs=[0.1], wds=[0.0],
                              momentum=0.9)
        mx.nd.waitall()
    assert "IGCSGDMomUpdate: input 0 is float64" in str(err.value)


def test_one_optimizer_checks_each_new_set_of_arrays(ops, monkeypatch):
    """IGCSGD reads the arrays' dtype, storage and device once per set of arrays: float32 arrays
    take the op, the same optimizer then given float64 ones takes MXNet's update (the same
    values as MXNet's SGD), and float32 ones again the op."""
    calls = []
    op = mx.nd.IGCSGDMomUpdate
    monkeypatch.setattr(mx.nd, "IGCSGDMomUpdate",
                        lambda *a, **k: calls.append(k["num_weights"]) or op(*a, **k))
    ours = IGCSGD(learning_rate=0.05, momentum=0.9, wd=1e-3)
    for dtype, want_calls in (("float32", [3]), ("float64", [3]), ("float32", [3, 3])):
        results = []
        for opt in (ours, mx.optimizer.SGD(learning_rate=0.05, momentum=0.9, wd=1e-3)):
            rng = np.random.RandomState(4)
            weights = [mx.nd.array(rng.normal(0, 1, 5), dtype=dtype) for _ in range(3)]
            grads = [mx.nd.array(rng.normal(0, 1, 5), dtype=dtype) for _ in range(3)]
            states = [opt.create_state(i, w) for i, w in enumerate(weights)]
            opt.update_multi_precision(list(range(3)), weights, grads, states)
            results.append([w.asnumpy() for w in weights])
        assert calls == want_calls, dtype
        for got, want in zip(*results):
            np.testing.assert_array_equal(got, want)
