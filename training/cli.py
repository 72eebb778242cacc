"""The command line both entry points share: flag types, argument groups, two-pass presets.

The network config flags are not listed here: each comes from the registry's annotation of the
builder keyword (`network.config_options()`), with its parser, choices and help text.
"""
import argparse
import math
import sys

import mxnet as mx

import network
from network.options import non_negative_int, positive_int  # noqa: F401  (also the entry points')


def gpu_list(text):
    """--gpus: '' is the CPU, '0,2' picks GPUs 0 and 2."""
    text = text.strip()
    if not text:
        return ()
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of GPU ids, got {text!r}") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"GPU ids must be distinct and >= 0, got {text!r}")
    return gpus


def epoch_list(text):
    """--lr-steps: '200,300,350'."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of epochs, got {text!r}") from None


def _rgb(check, what):
    def convert(text):
        try:
            values = tuple(float(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise argparse.ArgumentTypeError(
                f"expected three comma-separated numbers, got {text!r}")
        if not all(math.isfinite(v) and check(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected three {what} numbers, got {text!r}")
        return values
    return convert


rgb = _rgb(lambda v: True, "finite")                     # --mean-rgb
positive_rgb = _rgb(lambda v: v > 0, "finite positive")  # --std-rgb


def _in_range(kind, low, high, low_open=False, high_open=False):
    """A number in [low, high] (an open end excluded); nan and inf are refused."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or \
                (low_open and value == low) or (high_open and value == high):
            bounds = ("(" if low_open else "[") + f"{low:g}, " + \
                (f"{high:g}" if math.isfinite(high) else "inf") + (")" if high_open else "]")
            raise argparse.ArgumentTypeError(f"must be a finite number in {bounds}, "
                                             f"got {text!r}")
        return value
    return convert


positive_float = _in_range(float, 0, math.inf, low_open=True, high_open=True)
non_negative_float = _in_range(float, 0, math.inf, high_open=True)
fraction = _in_range(float, 0, 1, high_open=True)            # --momentum
factor = _in_range(float, 0, 1, low_open=True)               # --lr-factor


def default_gpus():
    """The GPUs MXNet can use, as a --gpus string ('' when there is none)."""
    return ",".join(str(i) for i in range(mx.context.num_gpus()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: the message and where the usage is."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown once and readable: none for a flag without one (None) or whose help
    already states it, a GPU tuple as the comma list it was given as."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text or \
                not action.option_strings:
            return text
        value = action.default
        if isinstance(value, tuple):
            value = ",".join(map(str, value)) or "''"
        return f"{text} (default: {str(value).replace('%', '%%')})"


def network_default_help(option, name=None):
    """The help of a network config flag with its default: that of network `name`, or every
    network's when none is chosen yet."""
    if name is not None:
        try:
            defaults = network.network_defaults(name)
        except ValueError:
            name = None
        else:
            if option.key not in defaults:
                return f"{option.help} (not used by {name})"
            if "default" in option.help:
                return option.help
            return f"{option.help} (default for {name}: {defaults[option.key]})"
    if "default" in option.help:
        return option.help
    by_value = {}
    for net in network.list_networks():
        value = network.network_defaults(net).get(option.key, by_value)
        if value is not by_value:
            by_value.setdefault(value, []).append(net)
    if len(by_value) == 1 and sum(map(len, by_value.values())) == len(network.list_networks()):
        return f"{option.help} (default: {next(iter(by_value))})"
    listed = "; ".join(f"{value} for {', '.join(nets)}" for value, nets in by_value.items())
    return f"{option.help} (default depends on --network: {listed})"


def add_network_arguments(parser):
    parser.formatter_class = HelpFormatter
    net = parser.add_argument_group("network (a flag left out takes the network's default)")
    net.add_argument("--network", help="network name (see `python -m network --list`)")
    for key, option in network.config_options().items():
        net.add_argument(option.flag, dest=key, type=option.parse, choices=option.choices,
                         metavar="{true,false}" if option.kind is bool else None,
                         help=network_default_help(option))


def show_network_defaults(parser, name):
    """Let --help show the defaults of network `name` (the first pass found it)."""
    options = network.config_options()
    for action in parser._actions:
        if action.dest in options:
            action.help = network_default_help(options[action.dest], name)


def add_common_arguments(parser):
    """The flags both entry points share, in argparse groups. Defaults that depend on the
    dataset or network (epochs, lr, batch, mean/std...) are set by the entry point's presets."""
    add_network_arguments(parser)

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", help="directory with the record files (default data/<dataset>)")
    data.add_argument("--num-classes", type=positive_int, help="number of classes")
    data.add_argument("--mean-rgb", type=rgb, help="per-channel mean subtracted, 'R,G,B'")
    data.add_argument("--std-rgb", type=positive_rgb, help="per-channel std divided by, 'R,G,B'")
    data.add_argument("--data-threads", type=positive_int, default=4,
                      help="decoding/augmentation threads of each record reader")

    train = parser.add_argument_group("training")
    train.add_argument("--gpus", type=gpu_list, default=default_gpus(),
                       help="comma list of GPU ids; '' trains on the CPU "
                            "(default: every GPU MXNet can use, here %(default)r)")
    train.add_argument("--batch-size", type=positive_int, help="training batch size (per worker)")
    train.add_argument("--test-batch-size", type=positive_int, help="validation batch size")
    train.add_argument("--num-epochs", type=positive_int, help="number of training epochs")
    train.add_argument("--lr", type=positive_float, help="initial learning rate")
    train.add_argument("--lr-factor", type=factor,
                       help="learning-rate multiplier at each step, in (0, 1]")
    train.add_argument("--lr-steps", type=epoch_list,
                       help="epochs after which the lr is multiplied by --lr-factor, "
                            "e.g. 200,300,350 (default: 1/2, 3/4, 7/8 of the epochs)")
    train.add_argument("--lr-step-every", type=positive_int,
                       help="multiply the lr by --lr-factor every N epochs (instead of --lr-steps)")
    train.add_argument("--wd", type=non_negative_float,
                       help="weight decay (on every weight, bias, gamma, beta), >= 0")
    train.add_argument("--momentum", type=fraction, help="momentum, in [0, 1)")
    train.add_argument("--optimizer", choices=("nag", "sgd"), help="nag = Nesterov SGD")
    train.add_argument("--kv-store", default="device",
                       help="MXNet kvstore: local, device, or dist_sync / dist_device_sync / "
                            "dist_async (multi-machine, run through tools/launch.py)")
    train.add_argument("--precise-bn", type=non_negative_int, default=0, metavar="N",
                       help="before each validation, recompute every BatchNorm's running mean "
                            "and variance from N training batches with the current weights "
                            "(0: keep the moving averages of training)")
    train.add_argument("--rand-seed", type=int,
                       help="seed of the initialisation and data order (default: a continued "
                            "run's own, else from the clock)")

    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--model-prefix",
                     help="checkpoint prefix: PREFIX-symbol.json, PREFIX-NNNN.params/.states "
                          "(default runs/<dataset>/<network and config>/model)")
    run.add_argument("--log-file", help="log file (default PREFIX.log; appended to)")
    run.add_argument("--checkpoint-epochs", type=positive_int,
                     help="save every N epochs (and always at the end; default num-epochs/8)")
    run.add_argument("--log-iters", type=positive_int, default=50,
                     help="log speed and metrics every N batches")
    tune = parser.add_argument_group("fine-tuning")
    tune.add_argument("--pretrained", metavar="FILE.params",
                      help="start a fresh run from these weights: every argument and BN state "
                           "whose name and shape match is loaded, the rest (e.g. a classifier "
                           "for another number of classes) is initialised as usual")
    tune.add_argument("--freeze", metavar="REGEX",
                      help="keep the learnable arguments whose names match REGEX (re.search) "
                           "fixed, e.g. '^(?!fc)' for all but the classifier. MXNet updates BN "
                           "running statistics in the backward pass: those of a frozen "
                           "backbone (no trained layer before them) stay fixed too")
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--load-epoch", type=int,
                        help="continue from checkpoint PREFIX-NNNN (N epochs done)")
    resume.add_argument("--resume", action="store_true",
                        help="continue from the latest complete checkpoint under --model-prefix")
    run.add_argument("--allow-changes", action="store_true",
                     help="let --resume / --load-epoch continue a checkpoint although this "
                          "command differs from its run (network, data, seed, recipe); the "
                          "differences are logged")
    return parser


def parse_with_presets(parser, argv, presets):
    """Two-pass parse: `presets(first_pass_args)` returns defaults that depend on the dataset,
    the network or the devices; they are installed with set_defaults before the final parse, so
    anything given on the command line still wins and `args` is never edited afterwards."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # --help waits for the final pass, so it shows the defaults of the chosen dataset/network.
    first, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    if first.network is not None:
        show_network_defaults(parser, first.network)
    parser.set_defaults(**presets(first))
    return parser.parse_args(argv)
