"""train_model.py / train_imagenet.py: real short runs, data normalisation, the weight-decay
rule and the schedules, and the ImageNet readers, each against an independent reference (numpy
arithmetic, the recipe's numbers, pixels written by the test)."""
import os
import re

import mxnet as mx
import numpy as np
import pytest

import train_imagenet
import train_model
import training
from records import (
    DEMO_MEAN,
    DEMO_STD,
    cpu_args,
    make_records,
    read_params,
)
from training import recipes
from training.optim import upgrade_states

# Chance is 10% on the 10 demo classes.
DEMO_VAL_ACC_THRESHOLD = 30.0


# ---------------------------------------------------------------------------------------------
# Real training


def test_short_training_on_demo_records_lowers_loss_and_beats_chance(demo_dir, tmp_path, ops):
    # 4 epochs x 156 batches of 32 = 624 steps; the last epoch at lr 0.01 lets the BN running
    # statistics (momentum 0.99 in the plain nets) catch up with the weights. Seeds 3 to 6 end
    # at 46-55 % validation accuracy.
    prefix = tmp_path / "m"
    history = train_model.main(cpu_args(demo_dir, prefix, "--num-epochs", "4",
                                        "--batch-size", "32", "--lr-steps", "3"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train-loss"] < 0.85 * history[0]["train-loss"]
    assert history[-1]["val-acc"] >= DEMO_VAL_ACC_THRESHOLD, history
    # The reported accuracy is that of the saved weights, scored here from the raw PNGs with
    # numpy normalisation and a freshly bound module.
    np.testing.assert_allclose(history[-1]["val-acc"], accuracy_of_checkpoint(
        str(prefix), 4, os.path.join(demo_dir, "test")), atol=0.11)


def accuracy_of_checkpoint(prefix, epoch, records):
    reader = mx.recordio.MXIndexedRecordIO(records + ".idx", records + ".rec", "r")
    images, labels = [], []
    for key in reader.keys:
        header, image = mx.recordio.unpack_img(reader.read_idx(key))  # BGR, as OpenCV decodes
        images.append(((image[:, :, ::-1] - np.array(DEMO_MEAN)) / np.array(DEMO_STD))
                      .transpose(2, 0, 1))
        labels.append(header.label)
    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    module = mx.mod.Module(symbol, context=mx.cpu())
    module.bind(data_shapes=[("data", (len(images), 3, 32, 32))], for_training=False,
                label_shapes=[("softmax_label", (len(images),))])
    module.set_params(arg_params, aux_params)
    module.forward(mx.io.DataBatch([mx.nd.array(np.stack(images))]), is_train=False)
    predicted = module.get_outputs()[0].asnumpy().argmax(axis=1)
    return 100.0 * float(np.mean(predicted == np.array(labels)))


def test_train_imagenet_reports_top1_and_top5_for_igcv1_and_igcv3(tmp_path, ops):
    data = tmp_path / "imagenet"
    rng = np.random.RandomState(0)
    # 10 classes of flat colours with noise, stored at 48x64: the iterator resizes and crops.
    colour = lambda label: (np.array([25 * label, 255 - 25 * label, 128]) +  # noqa: E731
                            rng.randint(-20, 20, (48, 64, 3))).clip(0, 255).astype(np.uint8)
    train_labels, val_labels = [i % 10 for i in range(8)], [i % 10 for i in range(4)]
    make_records(data, "train", train_labels, pixels=lambda i: colour(train_labels[i]))
    make_records(data, "val", val_labels, pixels=lambda i: colour(val_labels[i]))
    (data / "synsets.txt").write_text("".join(f"n{i:08d}\n" for i in range(10)))
    # The authors' --depth=18 for the *_d18 network is accepted (the name already says it).
    for name, net in (("igcv1", ["--network", "resnet_igc_imgnet_d18", "--depth", "18",
                                 "--primary-partition", "2", "--secondary-partition", "4"]),
                      ("igcv3", ["--network", "igcv3", "--width-multiplier", "0.25"])):
        prefix = tmp_path / name / "model"
        history = train_imagenet.main(
            [*net, "--data-dir", str(data), "--gpus", "", "--batch-size", "4",
             "--test-batch-size", "4", "--num-epochs", "1", "--model-prefix", str(prefix),
             "--rand-seed", "0", "--data-threads", "1"])
        (epoch,) = history
        assert 0 <= epoch["val-acc"] <= epoch["val-top5-acc"] <= 100
        log = open(f"{prefix}.log").read()
        assert "val-acc=" in log and "val-top5-acc=" in log
        # The class count comes from synsets.txt: the classifier has 10 outputs.
        assert read_params(f"{prefix}-0001.params")["arg:fc_score_weight" if name == "igcv1"
                                                     else "arg:fc_weight"].shape[0] == 10


# ---------------------------------------------------------------------------------------------
# Data, optimiser, schedule


def test_record_iter_normalises_and_pads_with_the_mean(tmp_path):
    rng = np.random.RandomState(1)
    images = [rng.randint(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(8)]
    make_records(tmp_path, "train", [0] * 8, pixels=lambda i: images[i])
    record = training.RecordFile(str(tmp_path / "train.rec"), str(tmp_path / "train.idx"), 8, 1)
    mean, std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 50.0, 40.0])
    batch = next(iter(training.record_iter(record, 8, (3, 32, 32), mean, std, {})))
    expected = (np.stack(images).transpose(0, 3, 1, 2) - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(batch.data[0].asnumpy(), expected, rtol=1e-5, atol=1e-5)

    # 4-pixel padding + random crop: padded pixels hold the mean grey, i.e. about 0.
    padded = np.concatenate([b.data[0].asnumpy() for b in training.record_iter(
        record, 8, (3, 32, 32), mean, std, dict(pad=4, rand_crop=True), shuffle=True, seed=5)])
    fill = (round(mean.mean()) - mean) / std
    is_fill = np.all(np.isclose(padded, fill[None, :, None, None], atol=1e-5), axis=1)
    assert is_fill.any()
    assert np.abs(fill).max() < 0.5


def test_workers_read_disjoint_equal_parts_of_the_data(tmp_path):
    # Image i carries i in its pixels, so the reader's output says which records it read.
    make_records(tmp_path, "train", [0] * 103, pixels=lambda i: np.full((32, 32, 3), i, np.uint8))
    record = training.RecordFile(str(tmp_path / "train.rec"), str(tmp_path / "train.idx"), 103, 1)
    parts = []
    for rank in range(2):
        reader = training.record_iter(record, 1, (3, 32, 32), (0, 0, 0), (1, 1, 1), {},
                                      shuffle=True, seed=2, num_parts=2, part_index=rank)
        parts.append([int(b.data[0].asnumpy()[0, 0, 0, 0]) for b in reader])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(103))
    # fit() runs (records // workers) // batch steps per epoch: both parts have that many.
    assert min(len(p) for p in parts) >= 103 // 2


def test_weight_decay_reaches_weights_biases_gammas_and_betas():
    names = ["conv_weight", "fc_bias", "bn_gamma", "bn_beta", "custom_scale"]
    optimizer = training.make_optimizer("nag", names, learning_rate=0.5, momentum=0.9, wd=0.1,
                                        rescale_grad=1.0)
    optimizer.idx2name = dict(enumerate(names))  # what Module.init_optimizer does
    for index, name in enumerate(names):
        weight = mx.nd.array([1.0, -2.0])
        state = optimizer.create_state(index, weight)
        optimizer.update(index, weight, mx.nd.zeros(2), state)
        # With a zero gradient, one Nesterov step moves w by -lr * (1 + momentum) * wd * w.
        decay = 0.0 if name == "custom_scale" else 0.5 * 1.9 * 0.1
        np.testing.assert_allclose(weight.asnumpy(), np.array([1.0, -2.0]) * (1 - decay),
                                   rtol=1e-6, err_msg=name)


def test_default_schedule_drops_lr_at_half_three_quarters_and_seven_eighths():
    assert training.default_lr_steps(400) == (200, 300, 350)
    scheduler = training.make_lr_scheduler(0.1, 0.1, 10, training.default_lr_steps(16))
    lrs = [training.lr_of_epoch(scheduler, 0.1, e, 10) for e in range(16)]
    expected = [0.1] * 8 + [0.01] * 4 + [0.001] * 2 + [0.0001] * 2
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)


def test_igcv3_schedule_multiplies_lr_by_098_every_epoch():
    scheduler = training.make_lr_scheduler(0.045, 0.98, 7, step_every=1)
    lrs = [training.lr_of_epoch(scheduler, 0.045, e, 7) for e in range(5)]
    np.testing.assert_allclose(lrs, [0.045 * 0.98 ** e for e in range(5)], rtol=1e-9)


def test_gpus_flag_defaults_to_available_gpus_and_empty_means_cpu():
    parser = train_model.build_parser()
    assert parser.parse_args([]).gpus == tuple(range(mx.context.num_gpus()))
    assert parser.parse_args(["--gpus", ""]).gpus == ()
    assert parser.parse_args(["--gpus", "0,2"]).gpus == (0, 2)
    assert training.contexts_for(()) == (mx.cpu(),)


# ---------------------------------------------------------------------------------------------
# ImageNet recipes: the authors' values reach the reader

# Written from the authors' scripts, independently of training/recipes.py:
# hellozting/InterleavedGroupConvolutions train_imagenet.py get_iterator (aug_type=1) and
# homles11/IGCV3 train_imagenet.py + common/data.py get_rec_iter (augmentation level 2).
AUTHORS_READERS = {
    "resnet_igc_imgnet_d18": dict(
        mean=(123.370, 112.757, 99.406), std=(68.998, 66.093, 68.292),
        train=dict(rand_crop=True, rand_mirror=True, min_random_scale=0.533,
                   max_random_scale=1.0, min_img_size=256, max_aspect_ratio=0.25, random_h=36,
                   random_s=50, random_l=50, inter_method=9, fill_value=112),
        val=dict(rand_crop=False, rand_mirror=False, min_random_scale=0.533,
                 max_random_scale=0.533, min_img_size=256, inter_method=9)),
    "igcv3": dict(
        mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0),
        train=dict(rand_crop=True, rand_mirror=True, min_random_scale=0.533,
                   max_random_scale=1.0, random_h=36, random_s=50, random_l=50,
                   fill_value=127),
        val=dict(rand_crop=False, rand_mirror=False, min_random_scale=0.533,
                 max_random_scale=0.534)),
}
READER_BOOKKEEPING = {"path_imgrec", "path_imgidx", "data_shape", "batch_size", "label_width",
                      "shuffle", "seed", "seed_aug", "num_parts", "part_index",
                      "preprocess_threads"}


def image_record_iter_parameters():
    """The keyword names MXNet's ImageRecordIter documents (it ignores any other silently)."""
    doc = mx.io.ImageRecordIter.__doc__
    doc = doc.decode() if isinstance(doc, bytes) else doc
    return set(re.findall(r"^(\w+) : ", doc, re.M))


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    data = tmp_path_factory.mktemp("imagenet")
    make_records(data, "train", [i % 10 for i in range(8)], size=(48, 64))
    make_records(data, "val", [i % 10 for i in range(4)], size=(48, 64))
    (data / "synsets.txt").write_text("".join(f"n{i:08d}\n" for i in range(10)))
    return str(data)


@pytest.mark.parametrize("name", sorted(AUTHORS_READERS))
def test_imagenet_readers_receive_the_authors_values(name, tiny_imagenet, tmp_path, monkeypatch,
                                                     ops):
    known = image_record_iter_parameters()
    assert {"random_h", "inter_method", "std_r", "fill_value"} <= known  # the parse works
    calls = []
    monkeypatch.setattr(mx.io, "ImageRecordIter", lambda **kw: calls.append(kw) or [])
    extra = ["--width-multiplier", "0.25"] if name == "igcv3" else []
    job, _ = train_imagenet.build_job(["--network", name, *extra, "--data-dir", tiny_imagenet,
                                       "--gpus", "", "--batch-size", "4", "--model-prefix",
                                       str(tmp_path / "m")])
    list(training.data.train_batches(job, 0, 1))
    training.data.val_iter(job)
    train, val = calls
    authors = AUTHORS_READERS[name]
    normalise = dict(zip(("mean_r", "mean_g", "mean_b"), authors["mean"]),
                     **dict(zip(("std_r", "std_g", "std_b"), authors["std"])))
    for kwargs, split in ((train, "train"), (val, "val")):
        assert set(kwargs) <= known, set(kwargs) - known
        reading = {k: v for k, v in kwargs.items() if k not in READER_BOOKKEEPING}
        fill = {} if split == "train" else {"fill_value": reading.get("fill_value")}
        assert reading == dict(authors[split], **normalise, **fill), split
        assert kwargs["data_shape"] == (3, 224, 224)
    # Scoring and prediction read validation images the same way.
    pre = recipes.validation_preprocessing(name, "imagenet")
    assert pre.augment == authors["val"]
    assert (pre.mean_rgb, pre.std_rgb) == (authors["mean"], authors["std"])


def test_igcv3_reader_subtracts_the_mean_and_divides_by_nothing(tmp_path):
    # The released IGCV3 weights expect mean-subtracted pixels: flat images come out as
    # pixel - mean exactly.
    values = [(10, 200, 90), (250, 0, 128)]
    make_records(tmp_path, "val", [0, 1], size=(256, 256),
                 pixels=lambda i: np.broadcast_to(np.array(values[i], np.uint8), (256, 256, 3)))
    record = training.RecordFile(str(tmp_path / "val.rec"), str(tmp_path / "val.idx"), 2, 2)
    pre = recipes.validation_preprocessing("igcv3", "imagenet")
    batch = next(iter(training.record_iter(record, 2, pre.data_shape, pre.mean_rgb, pre.std_rgb,
                                           pre.augment)))
    expected = np.array(values, np.float64) - np.array([123.68, 116.779, 103.939])
    np.testing.assert_allclose(batch.data[0].asnumpy().mean(axis=(2, 3)), expected, atol=1e-3)
    np.testing.assert_allclose(batch.data[0].asnumpy().std(axis=(2, 3)), 0, atol=1e-3)


def test_augment_flag_keeps_the_projects_other_augmentations_as_choices():
    actions = {a.dest: a for a in train_imagenet.build_parser()._actions}
    assert set(actions["augment"].choices) == {"igcv1", "igcv3", "resized-crop", "scale", "none"}
    known = image_record_iter_parameters()
    for kind in actions["augment"].choices:
        assert set(recipes.imagenet_augmentation(kind)) <= known, kind


def test_imagenet_schedules_are_the_authors(tiny_imagenet):
    parse = lambda name: training.parse_with_presets(  # noqa: E731
        train_imagenet.build_parser(), ["--network", name, "--gpus", ""], train_imagenet.presets)
    igcv1, igcv3 = parse("resnet_igc_imgnet_d18"), parse("igcv3")
    # IGCV1 train_imagenet.py defaults: 120 epochs, lr 0.1 x0.1 every 30, batch 256, Nesterov.
    assert (igcv1.num_epochs, igcv1.lr, igcv1.lr_factor, igcv1.lr_step_every, igcv1.batch_size,
            igcv1.optimizer, igcv1.momentum, igcv1.wd) == (120, 0.1, 0.1, 30, 256, "nag", 0.9,
                                                           1e-4)
    # IGCV3: 480 epochs, lr 0.045 x0.98 every epoch, wd 4e-5, 96 per device, SGD.
    assert (igcv3.num_epochs, igcv3.lr, igcv3.lr_factor, igcv3.lr_step_every, igcv3.batch_size,
            igcv3.optimizer, igcv3.wd) == (480, 0.045, 0.98, 1, 96, "sgd", 4e-5)
    assert (igcv1.augment, igcv3.augment) == ("igcv1", "igcv3")


def test_momentum_saved_by_mxnets_nag_is_converted_to_the_authors_form(tmp_path):
    """A .states written by MXNet 1.9's 'nag' (state = -lr * momentum) continues under
    AuthorsNAG with the same momentum (at a constant rate, with no weight decay, the two forms
    take the same steps)."""
    data = mx.sym.var("data")
    symbol = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(data, num_hidden=3, name="fc"),
                                  name="softmax")
    batch = mx.io.DataBatch([mx.nd.array(np.arange(8.0).reshape(2, 4) / 8)],
                            [mx.nd.array([0, 2])])

    def module(optimizer):
        mod = mx.mod.Module(symbol, context=mx.cpu())
        mod.bind(data_shapes=[("data", (2, 4))], label_shapes=[("softmax_label", (2,))])
        mod.init_params(mx.init.Constant(0.1))
        mod.init_optimizer(optimizer=optimizer)
        return mod

    old = module(mx.optimizer.create("nag", learning_rate=0.1, momentum=0.9))
    for _ in range(2):
        old.forward_backward(batch)
        old.update()
    old.save_optimizer_states(str(tmp_path / "old.states"))
    saved = {i: s.asnumpy() for i, s in old._updater.states.items()}

    new = module(training.make_optimizer("nag", ["fc_weight", "fc_bias"], learning_rate=0.1,
                                         momentum=0.9, wd=0.0, rescale_grad=1.0))
    new.set_params(*old.get_params())
    new.load_optimizer_states(str(tmp_path / "old.states"))
    assert upgrade_states(new, 0.1) == 2
    for index, state in new._updater.states.items():
        assert isinstance(state, list) and state[1] == 0.1
        np.testing.assert_array_equal(state[0].asnumpy(), saved[index])
    assert upgrade_states(new, 0.1) == 0
    # One more step from there equals one more step of MXNet's 'nag' at a constant rate.
    for mod in (old, new):
        mod.forward_backward(batch)
        mod.update()
    for name, value in old.get_params()[0].items():
        np.testing.assert_allclose(new.get_params()[0][name].asnumpy(), value.asnumpy(),
                                   rtol=1e-6, err_msg=name)
