"""Train an IGC network (or its baselines) on CIFAR-10, CIFAR-100, SVHN, the demo set or a
folder of your own images.

    python train_model.py --network plain_igc --depth 38 --primary-partition 24 \
        --secondary-partition 2 --dataset cifar10
    python train_model.py --dataset folder --data-dir data/pets --network resnet

Records come from `tools/make_rec.sh DATASET` (data/DATASET/train.rec and test.rec). The recipe
is the authors' (`training/recipes.py`); a folder set's classes, image size and mean/std come
from its make_rec.json (`training/folder.py`). See `--help` for every flag and its default.
"""
import argparse

import training
import utility
from training import folder, recipes


def build_parser():
    parser = training.cli.ArgumentParser(
        description="Train an IGC network on CIFAR-10/100, SVHN, the demo set or your own images "
                    "(--dataset folder --data-dir OUT, made by tools/make_rec.sh folder).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(recipes.CIFAR_DATASETS) + [folder.DATASET],
                        default="cifar10",
                        help="sets num-classes, mean/std, epochs, test batch, augmentation; "
                             "folder reads them from --data-dir's make_rec.json")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction,
                        help="pad, random crop and mirror the training images (off in the "
                             "svhn preset)")
    training.add_common_arguments(parser)
    parser.set_defaults(**recipes.CIFAR_RECIPE)
    return parser


def presets(first):
    if first.dataset == folder.DATASET:
        return folder.folder_presets(folder.read_folder_set(first.data_dir))
    preset = dict(recipes.CIFAR_DATASETS[first.dataset])
    # A preset's lr steps belong to its epoch count: another --num-epochs gets the default
    # schedule of that count, unless --lr-steps is given too.
    if first.num_epochs is not None and first.num_epochs != preset["num_epochs"]:
        preset.pop("lr_steps", None)
    return preset


def build_job(argv):
    parser = build_parser()
    args = training.parse_with_presets(parser, argv, presets)
    kv = training.create_kvstore(args.kv_store)
    if args.dataset == folder.DATASET:
        size = folder.read_folder_set(args.data_dir).image_size
        augment = folder.folder_augmentation(args.augment, size)
    else:
        size, augment = None, recipes.cifar_augmentation(args.augment)
    job = training.resolve_job(
        args, dataset=args.dataset, dataset_kind="cifar", train_name="train", val_name="test",
        train_augment=augment, val_augment={}, top_k=0, kv=kv, image_size=size)
    return job, kv


def main(argv=None):
    utility.setup_process()
    return training.run(build_parser(), build_job, argv)


if __name__ == "__main__":
    main()
