"""Random augmentation of the training readers: every image its own draw, reproducible from the
run's seed and epoch, and no two (seed, epoch) streams alike.

The images are noise, so each output identifies its crop offset and mirror exactly."""
import collections

import numpy as np

import training
from records import make_records

MEAN, STD = np.array([120.0, 110.0, 100.0]), np.array([60.0, 50.0, 40.0])
CIFAR = dict(pad=4, rand_crop=True, rand_mirror=True)


def noise_records(tmp_path, count, side=32):
    rng = np.random.RandomState(3)
    images = rng.randint(0, 256, (count, side, side, 3)).astype(np.uint8)
    make_records(tmp_path, "train", list(range(count)), size=(side, side),
                 pixels=lambda i: images[i])
    return (training.RecordFile(str(tmp_path / "train.rec"), str(tmp_path / "train.idx"), count,
                                count), images)


def draws(record, images, keys, batch_size, pad=4, side=32, **augment):
    """[(image index, top, left, mirrored)] of every output image of one reader."""
    fill = round(MEAN.mean())
    big = side + 2 * pad
    padded = np.full((len(images), big, big, 3), fill, np.float64)
    padded[:, pad:pad + side, pad:pad + side] = images
    normalised = ((padded - MEAN) / STD).transpose(0, 3, 1, 2)
    found = []
    for batch in training.record_iter(record, batch_size, (3, 32, 32), MEAN, STD,
                                      augment or CIFAR, shuffle=True, seed=keys):
        labels = batch.label[0].asnumpy().astype(int)
        for image, label in zip(batch.data[0].asnumpy(), labels):
            matches = [(label, top, left, flip)
                       for top in range(big - 31) for left in range(big - 31) for flip in (0, 1)
                       if np.allclose((lambda c: c[..., ::-1] if flip else c)(
                           normalised[label, :, top:top + 32, left:left + 32]), image,
                           atol=1e-4)]
            assert len(matches) == 1, "output is not one crop of its padded image"
            found.append(matches[0])
    return found


def test_cifar_augmentation_draws_every_image_independently_and_reproducibly(tmp_path):
    record, images = noise_records(tmp_path, 64)
    first = draws(record, images, (7, 0), 16)
    assert sorted(d[0] for d in first) == list(range(64))  # one epoch, each image once
    # MXNet's own seeding gave every batch of a reader the same 16 crops and flips.
    per_batch = [[d[1:] for d in first[k:k + 16]] for k in range(0, 64, 16)]
    assert all(per_batch[0] != other for other in per_batch[1:])
    assert draws(record, images, (7, 0), 16) == first  # reproducible: a resumed epoch
    # (seed 7, epoch 1) and (seed 8, epoch 0): unrelated streams (seed + epoch made them equal).
    assert draws(record, images, (7, 1), 16) != draws(record, images, (8, 0), 16)
    # Offsets 0..8 and both mirror states, near uniform over 4 epochs of 64 draws.
    many = first + sum((draws(record, images, (7, e), 16) for e in (1, 2, 3)), [])
    for axis in (1, 2):
        counts = collections.Counter(d[axis] for d in many)
        assert sorted(counts) == list(range(9))
        assert max(counts.values()) < 3 * len(many) / 9
    assert 0.35 < np.mean([d[3] for d in many]) < 0.65


def test_other_augmentation_readers_do_not_share_draws(tmp_path):
    # Images larger than the input: ImageRecordIter crops them itself (seed_aug).
    record, images = noise_records(tmp_path, 16, side=40)
    augment = dict(rand_crop=True, rand_mirror=True)
    one = draws(record, images, (7, 1), 16, pad=0, side=40, **augment)
    assert one == draws(record, images, (7, 1), 16, pad=0, side=40, **augment)
    assert [d[1:] for d in one] != [d[1:] for d in
                                    draws(record, images, (8, 0), 16, pad=0, side=40, **augment)]
    assert len({d[1:] for d in one}) > 8
