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


IMAGENET_MEAN_RGB = (123.370, 112.757, 99.406)
IMAGENET_STD_RGB = (68.998, 66.093, 68.292)
IMAGENET_CROP = 224
IMAGENET_VAL_SHORT_SIDE = 256

# The IGCV1 paper's ResNet-18 recipe: Nesterov, lr 0.1 x0.1 every 30 epochs, 100 epochs.
IGCV1_RECIPE = dict(num_epochs=100, batch_size=256, test_batch_size=200, lr=0.1,
                    lr_factor=0.1, lr_step_every=30, optimizer="nag", momentum=0.9, wd=1e-4,
                    augment="resized-crop", mean_rgb=IMAGENET_MEAN_RGB, std_rgb=IMAGENET_STD_RGB)
# IGCV3 (and the MobileNetV2 / IGCV2 baselines trained alike): SGD lr 0.045 x0.98 every epoch,
# wd 4e-5, 96 images per device, 480 epochs, random scale 0.533-1.0.
IGCV3_RECIPE = dict(num_epochs=480, test_batch_size=200, lr=0.045, lr_factor=0.98,
                    lr_step_every=1, optimizer="sgd", momentum=0.9, wd=4e-5, augment="scale",
                    mean_rgb=IMAGENET_MEAN_RGB, std_rgb=IMAGENET_STD_RGB)
IGCV3_BATCH_PER_DEVICE = 96
IMAGENET_RECIPES = {"igcv1": IGCV1_RECIPE, "resnet": IGCV1_RECIPE,
                    "igcv3": IGCV3_RECIPE, "mobilenetv2": IGCV3_RECIPE, "igcv2": IGCV3_RECIPE}
IMAGENET_AUGMENTS = ("resized-crop", "scale", "none")


def imagenet_recipe(family):
    """The training defaults of an ImageNet network family (IGCV1's for an unknown one)."""
    return IMAGENET_RECIPES.get(family, IGCV1_RECIPE)


def imagenet_augmentation(kind):
    """ImageRecordIter keywords of the ImageNet training reader for --augment `kind`."""
    if kind == "resized-crop":
        return dict(random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
                    min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3, rand_mirror=True)
    if kind == "scale":
        return dict(rand_crop=True, min_random_scale=0.533, max_random_scale=1.0,
                    min_img_size=IMAGENET_CROP, rand_mirror=True)
    return imagenet_val_augmentation()


def imagenet_val_augmentation():
    """ImageRecordIter keywords of the ImageNet validation reader."""
    return dict(resize=IMAGENET_VAL_SHORT_SIDE)


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
                             imagenet_val_augmentation())
    if dataset not in CIFAR_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: "
                         f"{', '.join(sorted(CIFAR_DATASETS) + ['imagenet'])}")
    preset = CIFAR_DATASETS[dataset]
    return Preprocessing(preset["mean_rgb"], preset["std_rgb"], (3, size, size), {})
