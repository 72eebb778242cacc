"""Builds MXNet RecordIO image sets: CIFAR-10/100, SVHN, ImageNet, a folder of your own images
(one sub-folder per class) and the procedural demo set.

Run through tools/make_rec.sh (which provides the venv); `python -m tools.make_rec --help` from the
repository root works too. Every split is written as NAME.rec/.idx/.lst plus synsets.txt (class
names in label order) and make_rec.json (what was built, with which options, how many records).
All files are first written under temporary names and renamed only after every split succeeded,
with make_rec.json last, so a failure, a full disk or Ctrl-C never leaves a half file under a
final name, and an existing complete set is kept unless --force.
"""

import argparse
import os
import signal
import sys

from tools.recordio.cifar import CIFAR, build_cifar
from tools.recordio.demo import make_demo
from tools.recordio.folder import build_folder
from tools.recordio.imagenet import build_imagenet
from tools.recordio.sources import load_plain_pickle
from tools.recordio.svhn import build_svhn
from tools.recordio.writer import DataError, default_out, encode_png

__all__ = ["CIFAR", "DataError", "build_cifar", "build_imagenet", "build_svhn", "default_out",
           "encode_png", "load_plain_pickle", "main", "make_demo"]

def _int_in(low, high=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def build_parser():
    parser = argparse.ArgumentParser(
        prog="make_rec.sh",
        description="Build MXNet RecordIO files (train/test, ImageNet train/val) for a dataset.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--out", metavar="DIR", help="output folder (default: data/DATASET in the repository)"
    )
    common.add_argument(
        "--force", action="store_true", help="rebuild even when complete records exist"
    )
    checked = argparse.ArgumentParser(add_help=False)
    checked.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the md5 check (for a re-packed file in the official format)",
    )
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    for name in CIFAR:
        p = sub.add_parser(
            name, parents=[common, checked], help=f"{name} from {CIFAR[name].archive}"
        )
        p.add_argument(
            "--from",
            dest="source",
            metavar="ARCHIVE",
            help=f"local {CIFAR[name].archive} (default: download {CIFAR[name].url})",
        )
        if name == "cifar100":
            p.add_argument(
                "--coarse",
                action="store_true",
                help="label with the 20 superclasses, not the 100 classes",
            )

    p = sub.add_parser(
        "svhn", parents=[common, checked], help="SVHN cropped digits (train+extra / test)"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="folder holding train_32x32.mat, test_32x32.mat, extra_32x32.mat (default: download)",
    )
    p.add_argument(
        "--no-extra", dest="extra", action="store_false", help="train on train_32x32.mat alone"
    )

    p = sub.add_parser(
        "imagenet", parents=[common], help="ILSVRC2012 from extracted train/ and val/ folders"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        required=True,
        help="folder with train/<synset>/*.JPEG and val/ (class sub-folders or flat files)",
    )
    p.add_argument(
        "--val-labels",
        metavar="FILE",
        help="labels for a flat val/: lines 'FILE SYNSET' or 'FILE INDEX'",
    )
    p.add_argument(
        "--resize",
        type=_int_in(0),
        default=480,
        help="short side in pixels, 0 keeps the size (default 480)",
    )
    p.add_argument("--quality", type=_int_in(1, 100), default=95, help="JPEG quality (default 95)")
    p.add_argument(
        "--workers",
        type=_int_in(1),
        default=os.cpu_count() or 1,
        help="encoding processes (default: all cores)",
    )

    p = sub.add_parser(
        "folder", parents=[common],
        help="your own images, one sub-folder per class (train/ and val/ or test/ optional)")
    p.add_argument(
        "--from", dest="source", metavar="DIR", required=True,
        help="DIR/CLASS/*.jpg (a test split is held out) or DIR/train/CLASS/ and DIR/val/CLASS/",
    )
    p.add_argument(
        "--resize", type=_int_in(8, 4096), default=32,
        help="side of the stored square images: short side resized, centre crop (default 32)",
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.2,
        help="share of each class held out for testing when DIR has no val/ or test/ "
             "(default 0.2)",
    )
    p.add_argument("--quality", type=_int_in(1, 100), default=95, help="JPEG quality (default 95)")
    p.add_argument(
        "--workers", type=_int_in(1), default=os.cpu_count() or 1,
        help="encoding processes (default: all cores)",
    )

    p = sub.add_parser("demo", parents=[common], help="procedural 10-class 32x32 set (no download)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument(
        "--num-train", type=_int_in(1), default=5000, help="training images (default 5000)"
    )
    p.add_argument("--num-test", type=_int_in(1), default=1000, help="test images (default 1000)")
    return parser


def run(args):
    out = os.path.abspath(args.out) if args.out else default_out(args.dataset)
    if args.dataset in CIFAR:
        return build_cifar(
            args.dataset, out, args.source, args.verify, getattr(args, "coarse", False), args.force
        )
    if args.dataset == "svhn":
        return build_svhn(out, args.source, args.verify, args.extra, args.force)
    if args.dataset == "imagenet":
        return build_imagenet(
            out, args.source, args.val_labels, args.resize, args.quality, args.workers, args.force
        )
    if args.dataset == "folder":
        return build_folder(out, args.source, args.resize, args.test_fraction, args.quality,
                            args.workers, args.force)
    return make_demo(out, args.seed, args.num_train, args.num_test, args.force)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    # `kill` cleans up like Ctrl-C does: no .partial files left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(args)
    except DataError as e:
        print(f"make_rec.sh {args.dataset}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"make_rec.sh {args.dataset}: interrupted; partial files removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
