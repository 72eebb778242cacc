#!/usr/bin/env python3
"""Export a network (any registered one, with its config flags) to ONNX: input `data`
(N, 3, H, W) with a dynamic batch N (and dynamic H, W when the network pools globally), output
`probabilities` (N, classes). The file's metadata_props name the classes, the preprocessing
(mean/std, NCHW, RGB, 0-255 pixels) and the network (training/onnx_metadata.py).

    tools/export_onnx.py --model-prefix runs/demo/model --load-epoch 8 -o demo.onnx
    tools/export_onnx.py --network igcv3 --fold-bn -o igcv3.onnx    # random weights

Permutations become Reshape/Transpose with explicit sizes and IGCConv a Conv plus that
permutation (network/graph/onnx.py); --fold-bn folds each BatchNorm into the convolution that
feeds it. The file is written under a temporary name and renamed when complete; -o takes a
new path or a regular file (a symbolic link is written through), never a FIFO or a device.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import training  # noqa: E402
import utility  # noqa: E402
from network.graph.onnx import to_onnx  # noqa: E402
from training.checkpoint import write_bytes_atomically  # noqa: E402
from training.errors import mxnet_reason  # noqa: E402
from training.model import add_model_arguments, resolve_model  # noqa: E402
from training.onnx_metadata import onnx_metadata, set_metadata  # noqa: E402
from training.optim import make_initializer  # noqa: E402
from training.outputs import output_path  # noqa: E402


def build_parser():
    parser = training.cli.ArgumentParser(
        description="Write an ONNX model of a network (randomly initialised without weights).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-o", "--output", required=True, metavar="FILE.onnx",
                        help="where to write the model")
    parser.add_argument("--fold-bn", action="store_true",
                        help="fold every BatchNorm into the convolution before it")
    parser.add_argument("--rand-seed", type=int, default=0,
                        help="seed of the random weights when no checkpoint is given")
    add_model_arguments(parser, weights_required=False)
    parser.set_defaults(gpus=())
    return parser


def initial_params(symbol, data_shape, seed):
    """Freshly initialised weights as training starts them (BN statistics 0 and 1)."""
    import mxnet as mx  # here, so that a Python without MXNet is told so by `import training`
    mx.random.seed(seed)
    module = mx.mod.Module(symbol, data_names=("data",), label_names=("softmax_label",))
    try:
        module.bind(data_shapes=[("data", (1,) + tuple(data_shape))],
                    label_shapes=[("softmax_label", (1,))], for_training=False)
        module.init_params(make_initializer())
    except (MemoryError, mx.base.MXNetError) as err:
        reason = "out of memory" if isinstance(err, MemoryError) else mxnet_reason(err)
        raise training.ConfigError(f"cannot allocate the network's weights: {reason}") from None
    return module.get_params()


def main(argv=None):
    utility.setup_process()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        target = output_path(args.output)
        model = resolve_model(args)
        arg_params, aux_params = (model.arg_params, model.aux_params) if model.params_file \
            else initial_params(model.symbol, model.data_shape, args.rand_seed)
        try:
            proto = to_onnx(model.symbol, arg_params, aux_params, model.data_shape,
                            fold_bn=args.fold_bn, graph_name=model.network)
        except ValueError as err:
            raise training.ConfigError(str(err)) from None
        # Class names only from the data a checkpoint or --data-dir names, never a guess.
        names = (model.class_names() if args.model_prefix or args.data_dir else None) or \
            [str(c) for c in range(model.num_classes)]
        set_metadata(proto, onnx_metadata(model, names))
        try:
            write_bytes_atomically(target, proto.SerializeToString())
        except OSError as err:
            raise training.ConfigError(f"-o {args.output}: cannot write it "
                                       f"({err.strerror or err})") from None
    except training.ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    weights = model.params_file or f"random weights (seed {args.rand_seed})"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    print(f"wrote {args.output}: {model.network} from {weights}, input data ("
          f"{', '.join(d.dim_param or str(d.dim_value) for d in dims)}), output probabilities (N, "
          f"{model.num_classes}){', BN folded' if args.fold_bn else ''}")
    return args.output


if __name__ == "__main__":
    main()
