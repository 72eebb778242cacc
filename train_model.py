"""Train an IGC network (or its baselines) on CIFAR-10, CIFAR-100, SVHN or the demo set.

    python train_model.py --network plain_igc --depth 38 --primary-partition 24 \
        --secondary-partition 2 --dataset cifar10

Records come from `tools/make_rec.sh DATASET` (data/DATASET/train.rec and test.rec). The recipe
is the authors' (SPEC §7); see `--help` for every flag and its default.
"""
import argparse

import training

# Per-dataset defaults; any flag on the command line wins.
DATASETS = {
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

RECIPE = dict(network="plain_igc", batch_size=64, lr=0.1, lr_factor=0.1, optimizer="nag",
              momentum=0.9, wd=1e-4)


def build_parser():
    parser = argparse.ArgumentParser(
        description="Train an IGC network on CIFAR-10/100, SVHN or the demo set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10",
                        help="sets num-classes, mean/std, epochs, test batch, augmentation")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="no pad/crop/mirror (the default for svhn)")
    training.add_common_arguments(parser)
    parser.set_defaults(**RECIPE)
    return parser


def presets(first):
    return DATASETS[first.dataset]


def augmentation(augment):
    """4-pixel pad, random 32x32 crop and mirror (the authors' '+' augmentation) or none."""
    if not augment:
        return {}
    return dict(pad=4, rand_crop=True, rand_mirror=True)


def build_job(argv):
    parser = build_parser()
    args = training.parse_with_presets(parser, argv, presets)
    kv = training.create_kvstore(args.kv_store)
    job = training.resolve_job(
        args, dataset=args.dataset, dataset_kind="cifar", train_name="train", val_name="test",
        train_augment=augmentation(args.augment), val_augment={}, top_k=0, kv=kv)
    return job, kv


def main(argv=None):
    return training.run(build_parser(), build_job, argv)


if __name__ == "__main__":
    main()
