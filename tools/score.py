#!/usr/bin/env python3
"""Score a trained model on a whole record file: top-1, top-5 and loss, with the validation
preprocessing of the network's family.

    tools/score.py --model-prefix runs/demo/model --load-epoch 8
    tools/score.py --network resnet_igc_imgnet_d18 --variant igc_l100m2 \
        --params resnet_gcwf_noshare_imagenet_d18b100-0100.params --data-dir data/imagenet

A checkpoint of this project names its network, classes and data (PREFIX-model.json); an
authors' parameter file is loaded into `--network` (or `--symbol FILE`) by name, and any missing,
unexpected or differently shaped array is reported in one line.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import training  # noqa: E402
import utility  # noqa: E402
from training.cli import non_negative_int, positive_int  # noqa: E402
from training.metrics import confusion_table, per_class_table  # noqa: E402
from training.model import add_model_arguments, resolve_model  # noqa: E402
from training.scoring import score_model  # noqa: E402


def build_parser():
    parser = training.cli.ArgumentParser(
        description="Top-1, top-5 and loss of a model over a whole .rec file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--split", help="record set NAME.rec/.idx in --data-dir "
                                        "(default: test, val for ImageNet)")
    parser.add_argument("--batch-size", type=positive_int, default=200, help="images per batch")
    parser.add_argument("--data-threads", type=positive_int, default=4,
                        help="decoding threads of the record reader")
    parser.add_argument("--precise-bn", type=non_negative_int, default=0, metavar="N",
                        help="first recompute every BatchNorm's running statistics from N "
                             "batches of train.rec in --data-dir (0: the saved ones)")
    parser.add_argument("--per-class", action="store_true",
                        help="also print each class's images, correct and accuracy")
    parser.add_argument("--confusion", action="store_true",
                        help="also print the confusion matrix (rows: true, columns: predicted)")
    return parser


def format_score(values):
    top5 = f" top-5 {values['top5-acc']:.2f}%" if "top5-acc" in values else ""
    return (f"{values['records']}: {values['images']} images, top-1 {values['acc']:.2f}%"
            f"{top5} loss {values['loss']:.4f}")


def main(argv=None):
    utility.setup_process()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = resolve_model(args)
        values = score_model(model, args.split, args.batch_size, args.data_threads,
                             precise_bn=args.precise_bn,
                             confusion=args.per_class or args.confusion)
    except training.ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{model.params_file} ({model.network}, {model.dataset}) on {format_score(values)}")
    names = model.class_names() or [str(c) for c in range(model.num_classes)]
    for wanted, table in ((args.per_class, per_class_table), (args.confusion, confusion_table)):
        if wanted:
            print("\n".join(table(values["confusion"], names)))
    return values


if __name__ == "__main__":
    main()
