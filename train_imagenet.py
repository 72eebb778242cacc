"""Train an ImageNet network: IGCV1 (ResNet-18 style), IGCV2, IGCV3 or MobileNetV2.

    python train_imagenet.py --network resnet_igc_imgnet_d18 --primary-partition 100
    python train_imagenet.py --network igcv3

Records come from `tools/make_rec.sh imagenet` (data/imagenet/train.rec, val.rec, synsets.txt).
Each network family brings its recipe (`training/recipes.py`) as defaults; any flag on the
command line wins. Reports top-1 and top-5 accuracy.
"""
import argparse
import os
import re

import network
import training
import utility
from training import recipes


def build_parser():
    parser = training.cli.ArgumentParser(
        description="Train an IGC network on ImageNet (top-1 and top-5 accuracy).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--augment", choices=recipes.IMAGENET_AUGMENTS,
                        help="training augmentation. igcv1: the IGCV1 authors' (random scale "
                             "0.533-1.0 of the stored short side 480, aspect 0.75-1.25, colour "
                             "jitter h36 s50 l50, random 224 crop, mirror); igcv3: the IGCV3 "
                             "authors' (the same without the aspect change); resized-crop: "
                             "random area 8-100%%, aspect 3/4-4/3, mirror; scale: random scale "
                             "0.533-1.0 + crop + mirror, no jitter; none: centre crop. "
                             "Default: the network family's recipe")
    training.add_common_arguments(parser)
    parser.set_defaults(network="resnet_igc_imgnet_d18")
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
    preset = dict(recipes.imagenet_recipe(family), num_classes=count_synsets(data_dir(first)))
    if first.lr_steps is not None:
        # An explicit --lr-steps replaces the recipe's every-N-epochs schedule.
        preset.pop("lr_step_every", None)
    if preset["optimizer"] == "sgd":
        preset["batch_size"] = recipes.IGCV3_BATCH_PER_DEVICE * max(1, len(first.gpus))
    return preset


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
        train_augment=recipes.imagenet_augmentation(args.augment),
        val_augment=recipes.validation_preprocessing(args.network, "imagenet").augment,
        top_k=5, kv=kv,
        implied=implied_config(args.network))
    return job, kv


def main(argv=None):
    utility.setup_process()
    return training.run(build_parser(), build_job, argv)


if __name__ == "__main__":
    main()
