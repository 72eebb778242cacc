"""Train an IGC network (or its baselines) on CIFAR-10, CIFAR-100, SVHN or the demo set.

    python train_model.py --network plain_igc --depth 38 --primary-partition 24 \
        --secondary-partition 2 --dataset cifar10

Records come from `tools/make_rec.sh DATASET` (data/DATASET/train.rec and test.rec). The recipe
is the authors' (`training/recipes.py`); see `--help` for every flag and its default.
"""
import argparse

import training
import utility
from training import recipes


def build_parser():
    parser = argparse.ArgumentParser(
        description="Train an IGC network on CIFAR-10/100, SVHN or the demo set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(recipes.CIFAR_DATASETS), default="cifar10",
                        help="sets num-classes, mean/std, epochs, test batch, augmentation")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="no pad/crop/mirror (the default for svhn)")
    training.add_common_arguments(parser)
    parser.set_defaults(**recipes.CIFAR_RECIPE)
    return parser


def presets(first):
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
    job = training.resolve_job(
        args, dataset=args.dataset, dataset_kind="cifar", train_name="train", val_name="test",
        train_augment=recipes.cifar_augmentation(args.augment), val_augment={}, top_k=0, kv=kv)
    return job, kv


def main(argv=None):
    utility.setup_process()
    return training.run(build_parser(), build_job, argv)


if __name__ == "__main__":
    main()
