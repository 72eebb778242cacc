"""`python -m network NAME [--config-key VALUE ...]`: per-stage widths, partitions, parameters
and multiply-adds of one network. The flags are the network's config keys, dashed
(`--primary-partition 4`); `python -m network --list` lists the names."""
import argparse
import os
import sys

import network
import utility
from network.options import positive_int


def parse_args(argv):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("name", nargs="?")
    first.add_argument("--list", action="store_true")
    known, _ = first.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="python -m network", description=__doc__)
    parser.add_argument("name", nargs="?", help="network name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the network names and exit")
    parser.add_argument("--num-classes", type=positive_int,
                        help="default: 10 (CIFAR) / 1000 (ImageNet)")
    if known.name in network.list_networks():
        group = parser.add_argument_group(f"{known.name} config")
        defaults = network.network_defaults(known.name)
        for key, option in network.network_options(known.name).items():
            group.add_argument(option.flag, dest=key, default=defaults[key], type=option.parse,
                               choices=option.choices,
                               help=f"{option.help} (default: {defaults[key]!r})")
    args = parser.parse_args(argv)
    if not args.list and args.name is None:
        parser.error(f"give a network name or --list; names: {', '.join(network.list_networks())}")
    if not args.list and args.name not in network.list_networks():
        parser.error(f"unknown network {args.name!r}; valid names: "
                     f"{', '.join(network.list_networks())}")
    return args


def summary_rows(name, num_classes, config):
    info = network.network_info(name)
    shape = (1, 3, info["input_size"], info["input_size"])
    symbol = network.get_symbol(name, num_classes, **dict(config, permutation="reshape"))
    plan = network.get_plan(name, **config)
    totals = {row.stage: [0, 0] for row in plan}
    totals["classifier"] = [0, 0]
    for layer in utility.layer_costs(symbol, shape):
        # A stage's layers are named PREFIX*, a one-layer stem may be named PREFIX without '_'.
        stage = next((row.stage for row in plan if layer["name"].startswith(row.prefix) or
                      layer["name"] == row.prefix.rstrip("_")), "classifier")
        totals[stage][0] += layer["params"]
        totals[stage][1] += layer["macs"]
    return plan, totals, utility.count_params(symbol, shape), utility.count_macs(symbol, shape)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name in network.list_networks():
            info = network.network_info(name)
            print(f"{name:24s} {info['dataset_kind']:8s} {info['input_size']:3d}  "
                  f"{info['description']}")
        return 0
    info = network.network_info(args.name)
    config = {key: getattr(args, key) for key in network.network_defaults(args.name)}
    num_classes = args.num_classes or (10 if info["dataset_kind"] == "cifar" else 1000)
    try:
        plan, totals, params, macs = summary_rows(args.name, num_classes, config)
    except ValueError as err:
        print(f"python -m network: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} ({info['family']}, {info['input_size']}x{info['input_size']} input, "
          f"{num_classes} classes) config: {config}")
    header = f"{'stage':10s} {'blocks':>6s} {'width':>6s} {'stride':>6s} {'structure':24s} " \
             f"{'params':>12s} {'MACs':>14s}"
    print(header)
    print("-" * len(header))
    for row in plan:
        structure = " ".join(f"{k}={v}" for k, v in row.structure().items())
        p, m = totals[row.stage]
        print(f"{row.stage:10s} {row.blocks:6d} {row.width:6d} {row.stride:6d} "
              f"{structure:24s} {p:12,d} {m:14,d}")
    p, m = totals["classifier"]
    print(f"{'classifier':10s} {'':6s} {num_classes:6d} {'':6s} {'':24s} {p:12,d} {m:14,d}")
    print("-" * len(header))
    print(f"params: total {params['total']:,} (conv {params['conv']:,}, fc {params['fc']:,}, "
          f"BN gamma/beta {params['bn']:,})")
    print(f"multiply-adds: total {macs['total']:,} ({macs['total'] / 1e6:.1f}M; conv "
          f"{macs['conv']:,}, fc {macs['fc']:,})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # The reader went away (`| head -1`): end quietly, as Unix tools do; stdout goes to
        # /dev/null so that the interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
