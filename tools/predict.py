#!/usr/bin/env python3
"""Classify images with a trained model: top-5 class names and probabilities per image.

    tools/predict.py --model-prefix runs/demo/model --load-epoch 8 cat.jpg dog.png

JPEG or PNG of any size, with the validation preprocessing of the network's family. Class names
come from the synsets.txt that tools/make_rec.sh wrote beside the training data (for CIFAR, the
archive's batches.meta names). A path that is missing, not an image or larger than the pixel
budget is reported in one line on stderr, the other images are still classified, and the exit
status is 1; a decoder's warning (a corrupt JPEG) is one line naming the file.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import training  # noqa: E402
import utility  # noqa: E402
from training.cli import positive_int  # noqa: E402
from training.model import add_model_arguments, resolve_model  # noqa: E402
from training.prediction import FORMATS, expand_paths, format_predictions, predict  # noqa: E402


def build_parser():
    parser = training.cli.ArgumentParser(
        description="Top-5 classes of each image under a trained model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (JPEG, PNG, ...), folders (their images, sub-folders "
                             "included) or quoted glob patterns such as 'photos/*.jpg'")
    parser.add_argument("--top", type=positive_int, default=5, help="classes shown per image")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="text lines, a JSON list or CSV rows (path, rank, label, class, "
                             "probability) on stdout")
    add_model_arguments(parser)
    parser.set_defaults(gpus=())
    return parser


def main(argv=None):
    utility.setup_process()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = resolve_model(args)
        model.check_data()
    except training.ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    results = predict(model, expand_paths(args.images), min(args.top, model.num_classes))
    for result in results:
        if result.error:
            print(f"{parser.prog}: error: {result.error}", file=sys.stderr)
        for warning in result.warnings:
            print(f"{parser.prog}: warning: {warning}", file=sys.stderr)
    sys.stdout.write(format_predictions(results, args.format))
    if any(r.error for r in results):
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
