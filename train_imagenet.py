"""Train an ImageNet network: IGCV1 (ResNet-18 style), IGCV2, IGCV3 or MobileNetV2.

    python train_imagenet.py --network resnet_igc_imgnet_d18 --primary-partition 100
    python train_imagenet.py --network igcv3

Records come from `tools/make_rec.sh imagenet` (data/imagenet/train.rec, val.rec, synsets.txt).
Each network family brings its recipe (SPEC §7) as defaults; any flag on the command line wins.
Reports top-1 and top-5 accuracy.
"""
import argparse
import os
import re

import network
import training
import utility

MEAN_RGB = (123.370, 112.757, 99.406)
STD_RGB = (68.998, 66.093, 68.292)
CROP = 224
VAL_SHORT_SIDE = 256

# The IGCV1 paper's ResNet-18 recipe: Nesterov, lr 0.1 x0.1 every 30 epochs, 100 epochs.
IGCV1_RECIPE = dict(num_epochs=100, batch_size=256, test_batch_size=200, lr=0.1,
                    lr_factor=0.1, lr_step_every=30, optimizer="nag", momentum=0.9, wd=1e-4,
                    augment="resized-crop")
# IGCV3 (and the MobileNetV2 / IGCV2 baselines trained alike): SGD lr 0.045 x0.98 every epoch,
# wd 4e-5, 96 images per device, 480 epochs, random scale 0.533-1.0.
IGCV3_RECIPE = dict(num_epochs=480, test_batch_size=200, lr=0.045, lr_factor=0.98,
                    lr_step_every=1, optimizer="sgd", momentum=0.9, wd=4e-5, augment="scale")
IGCV3_BATCH_PER_DEVICE = 96
RECIPES = {"igcv1": IGCV1_RECIPE, "resnet": IGCV1_RECIPE,
           "igcv3": IGCV3_RECIPE, "mobilenetv2": IGCV3_RECIPE, "igcv2": IGCV3_RECIPE}


def build_parser():
    parser = argparse.ArgumentParser(
        description="Train an IGC network on ImageNet (top-1 and top-5 accuracy).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--augment", choices=("resized-crop", "scale", "none"),
                        help="resized-crop: random area 8-100%%, aspect 3/4-4/3 (IGCV1); scale: "
                             "random scale 0.533-1.0 of the stored image, then a random crop "
                             "(IGCV3); both mirror. Default: the network family's recipe")
    training.add_common_arguments(parser)
    parser.set_defaults(network="resnet_igc_imgnet_d18", mean_rgb=MEAN_RGB, std_rgb=STD_RGB)
    return parser


def data_dir(args):
    return args.data_dir or os.path.join(utility.PROJECT_DIR, "data", "imagenet")


def count_synsets(directory):
    """Classes listed in synsets.txt (tools/make_rec.sh writes it), else ImageNet's 1000."""
    path = os.path.join(directory, "synsets.txt")
    if not os.path.isfile(path):
        return 1000
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def presets(first):
    try:
        family = network.network_info(first.network)["family"]
    except ValueError:
        family = None  # resolve_job reports the unknown name
    preset = dict(RECIPES.get(family, IGCV1_RECIPE), num_classes=count_synsets(data_dir(first)))
    if preset["optimizer"] == "sgd":
        preset["batch_size"] = IGCV3_BATCH_PER_DEVICE * max(1, len(first.gpus))
    return preset


def augmentation(kind):
    if kind == "resized-crop":
        return dict(random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
                    min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3, rand_mirror=True)
    if kind == "scale":
        return dict(rand_crop=True, min_random_scale=0.533, max_random_scale=1.0,
                    min_img_size=CROP, rand_mirror=True)
    return dict(resize=VAL_SHORT_SIDE)


def implied_config(name):
    """The authors wrote `--depth=18` for the *_d18 networks; the name already says it."""
    match = re.search(r"_d(\d+)$", name or "")
    return {"depth": int(match.group(1))} if match else {}


def build_job(argv):
    parser = build_parser()
    args = training.parse_with_presets(parser, argv, presets)
    kv = training.create_kvstore(args.kv_store)
    job = training.resolve_job(
        args, dataset="imagenet", dataset_kind="imagenet", train_name="train", val_name="val",
        train_augment=augmentation(args.augment), val_augment=dict(resize=VAL_SHORT_SIDE),
        top_k=5, kv=kv, implied=implied_config(args.network))
    return job, kv


def main(argv=None):
    return training.run(build_parser(), build_job, argv)


if __name__ == "__main__":
    main()
