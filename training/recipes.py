"""The authors' recipes as data: per-dataset presets (CIFAR, SVHN, demo), per-family ImageNet
recipes, and the reader settings (normalisation + ImageRecordIter keywords) of training and
validation. The entry points install these as argparse defaults; scoring and prediction use
`validation_preprocessing`, so every path reads an image the way the network was trained."""
import dataclasses

import network

# Per-dataset defaults of train_model.py; any flag on the command line wins.
CIFAR_DATASETS = {
    "cifar10": dict(num_classes=10, mean_rgb=(125.307, 122.950, 113.865),
                    std_rgb=(62.993, 62.089, 66.705), num_epochs=400, test_batch_size=400,
                    augment=True),
    "cifar100": dict(num_classes=100, mean_rgb=(129.304, 124.070, 112.434),
                     std_rgb=(68.170, 65.392, 70.418), num_epochs=400, test_batch_size=400,
                     augment=True),
    # SVHN: train+extra, no augmentation (digits must not be mirrored).
    "svhn": dict(num_classes=10, mean_rgb=(111.609, 113.161, 120.565),
                 std_rgb=(50.498, 51.259, 50.244), num_epochs=40, test_batch_size=280,
                 augment=False),
    # The procedural set from tools/make_rec.sh demo (statistics measured on its train split):
    # a few minutes on a CPU, so the lr stays at 0.1 for 6 of the 8 epochs.
    "demo": dict(num_classes=10, mean_rgb=(127.513, 128.462, 126.730),
                 std_rgb=(75.251, 75.488, 75.601), num_epochs=8, lr_steps=(6, 7),
                 test_batch_size=400, augment=True),
}
CIFAR_RECIPE = dict(network="plain_igc", batch_size=64, lr=0.1, lr_factor=0.1, optimizer="nag",
                    momentum=0.9, wd=1e-4)


def cifar_augmentation(augment):
    """4-pixel pad, random 32x32 crop and mirror (the authors' '+' augmentation) or none."""
    if not augment:
        return {}
    return dict(pad=4, rand_crop=True, rand_mirror=True)


# ImageNet, value for value from the authors' training scripts:
#   IGCV1: hellozting/InterleavedGroupConvolutions train_imagenet.py (get_iterator, defaults;
#          aug_type=1, its default) and options.py (ImageNet mean/std, test batch);
#   IGCV3: homles11/IGCV3 train_imagenet.py (set_defaults, set_data_aug_level(parser, 2)) and
#          common/data.py (add_data_args, add_data_aug_args, get_rec_iter).
# The records keep the short side at 480 (tools/make_rec.sh imagenet), as the authors' did.
IMAGENET_CROP = 224

IGCV1_MEAN_RGB = (123.370, 112.757, 99.406)   # IGCV1 get_iterator mean_r/g/b (fb_mean=False)
IGCV1_STD_RGB = (68.998, 66.093, 68.292)      # IGCV1 scale_r/g/b = 1/std; options.py std_rgb
IGCV3_MEAN_RGB = (123.68, 116.779, 103.939)   # IGCV3 data.py --rgb-mean default
IGCV3_STD_RGB = (1.0, 1.0, 1.0)               # IGCV3 get_rec_iter passes no std: mean only

# The IGCV1 paper's ResNet-18 recipe (IGCV1 train_imagenet.py): Nesterov (optimizer='Nesterov'),
# momentum 0.9, wd 1e-4, lr 0.1 (--lr) x0.1 (--lr-factor) every 30 epochs (--lr-epoch-step),
# 120 epochs (--num-epochs), batch 256 (--batch-size); test batch 200 (options.py, imagenet).
IGCV1_RECIPE = dict(num_epochs=120, batch_size=256, test_batch_size=200, lr=0.1,
                    lr_factor=0.1, lr_step_every=30, optimizer="nag", momentum=0.9, wd=1e-4,
                    augment="igcv1", mean_rgb=IGCV1_MEAN_RGB, std_rgb=IGCV1_STD_RGB)
# IGCV3 (and the MobileNetV2 / IGCV2 baselines trained alike), IGCV3 train_imagenet.py
# set_defaults: optimizer sgd (momentum 0.9, fit.py's default), lr 0.045, lr_factor 0.98 at every
# epoch (lr_step_epochs 1..479), wd 4e-5, batch 96 per device (batch_size=96 over gpus), 480
# epochs.
IGCV3_RECIPE = dict(num_epochs=480, test_batch_size=200, lr=0.045, lr_factor=0.98,
                    lr_step_every=1, optimizer="sgd", momentum=0.9, wd=4e-5, augment="igcv3",
                    mean_rgb=IGCV3_MEAN_RGB, std_rgb=IGCV3_STD_RGB)
IGCV3_BATCH_PER_DEVICE = 96
IMAGENET_RECIPES = {"igcv1": IGCV1_RECIPE, "resnet": IGCV1_RECIPE,
                    "igcv3": IGCV3_RECIPE, "mobilenetv2": IGCV3_RECIPE, "igcv2": IGCV3_RECIPE}

# Training reader keywords (mx.io.ImageRecordIter) of each --augment choice.
IMAGENET_TRAIN_AUGMENTS = {
    # IGCV1 get_iterator, train reader, aug_type=1:
    "igcv1": dict(
        rand_crop=True,          # rand_crop=True
        rand_mirror=True,        # rand_mirror=True
        min_random_scale=0.533,  # min_random_scale=0.533 (480 x 0.533 = 256)
        max_random_scale=1.0,    # max_random_scale=1.0 (aug_type > 0)
        min_img_size=256,        # min_img_size=256
        max_aspect_ratio=0.25,   # max_aspect_ratio=0.25 (aug_type > 0): aspect 0.75-1.25
        random_h=36,             # random_h=36 (aug_type > 0)
        random_s=50,             # random_s=50 (aug_type > 0)
        random_l=50,             # random_l=50 (aug_type > 0)
        inter_method=9,          # inter_method=9: MXNet picks the resize method
        # fill_value_r/g/b=123/113/99: ImageRecordIter has one fill_value for all three
        # channels (it ignores the per-channel names), so their mean grey.
        fill_value=112,
    ),
    # IGCV3 get_rec_iter, train reader, at augmentation level 2:
    "igcv3": dict(
        rand_crop=True,          # rand_crop=args.random_crop (default 1)
        rand_mirror=True,        # rand_mirror=args.random_mirror (default 1)
        min_random_scale=0.533,  # min_random_scale (train_imagenet.py set_defaults)
        max_random_scale=1.0,    # max_random_scale (train_imagenet.py set_defaults)
        random_h=36,             # max_random_h=36 (set_data_aug_level, level >= 2)
        random_s=50,             # max_random_s=50 (level >= 2)
        random_l=50,             # max_random_l=50 (level >= 2)
        fill_value=127,          # fill_value=127
    ),
    # The project's earlier choices, kept as options: Inception-style random-resized crop ...
    "resized-crop": dict(random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
                         min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3, rand_mirror=True),
    # ... random scale + crop without colour jitter ...
    "scale": dict(rand_crop=True, min_random_scale=0.533, max_random_scale=1.0,
                  min_img_size=IMAGENET_CROP, rand_mirror=True),
    # ... and no augmentation: a centre crop of the short side resized to 256.
    "none": dict(resize=256),
}
IMAGENET_AUGMENTS = tuple(IMAGENET_TRAIN_AUGMENTS)

# Validation reader keywords of each family: a centre crop after a fixed scale.
IMAGENET_VAL_AUGMENTS = {
    # IGCV1 get_iterator, val reader:
    "igcv1": dict(
        rand_crop=False,         # rand_crop=False: centre crop
        rand_mirror=False,       # rand_mirror=False
        min_random_scale=0.533,  # min_random_scale=0.533
        max_random_scale=0.533,  # max_random_scale=0.533
        min_img_size=256,        # min_img_size=256
        inter_method=9,          # inter_method=9
    ),
    # IGCV3 get_rec_iter, val reader:
    "igcv3": dict(
        rand_crop=False,         # rand_crop=False: centre crop
        rand_mirror=False,       # rand_mirror=False
        min_random_scale=0.533,  # min_random_scale=0.533
        max_random_scale=0.534,  # max_random_scale=0.534
    ),
}


def imagenet_recipe(family):
    """The training defaults of an ImageNet network family (IGCV1's for an unknown one)."""
    return IMAGENET_RECIPES.get(family, IGCV1_RECIPE)


def imagenet_augmentation(kind):
    """ImageRecordIter keywords of the ImageNet training reader for --augment `kind`."""
    return dict(IMAGENET_TRAIN_AUGMENTS[kind])


def imagenet_val_augmentation(family="igcv1"):
    """ImageRecordIter keywords of the ImageNet validation reader of a network family."""
    return dict(IMAGENET_VAL_AUGMENTS[imagenet_recipe(family)["augment"]])


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a reader turns a stored image into the network's input."""
    mean_rgb: tuple
    std_rgb: tuple
    data_shape: tuple        # (3, H, W)
    augment: dict            # ImageRecordIter keywords (resize, crop, ...)


def validation_preprocessing(network_name, dataset):
    """The validation preprocessing that `network_name` was trained with on `dataset` ('cifar10',
    'cifar100', 'svhn', 'demo' or 'imagenet'); ValueError for an unknown name or dataset."""
    info = network.network_info(network_name)
    size = info["input_size"]
    if dataset == "imagenet":
        recipe = imagenet_recipe(info["family"])
        return Preprocessing(recipe["mean_rgb"], recipe["std_rgb"], (3, size, size),
                             imagenet_val_augmentation(info["family"]))
    if dataset not in CIFAR_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: "
                         f"{', '.join(sorted(CIFAR_DATASETS) + ['imagenet'])}")
    preset = CIFAR_DATASETS[dataset]
    return Preprocessing(preset["mean_rgb"], preset["std_rgb"], (3, size, size), {})
