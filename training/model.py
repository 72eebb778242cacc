"""A trained model as the after-training tools see it: graph, weights, classes and the validation
preprocessing, resolved from a checkpoint of this project, a parameter file (ours or the
authors'), a network name with its config flags, or a saved graph (`--symbol`).

`add_model_arguments` is the flag set of tools/score.py, tools/predict.py and
tools/export_onnx.py; `resolve_model` turns the parsed flags into a `Model` or a ConfigError
naming the flag or file.
"""
import argparse
import dataclasses
import os

import mxnet as mx

import network
import utility
from network.released import RELEASED_CHECKPOINTS

from . import folder, recipes
from .checkpoint import Checkpoints, verify_params_file
from .cli import add_network_arguments, default_gpus, gpu_list, positive_int, positive_rgb, rgb
from .data import dataset_classes, first_image_shape
from .errors import ConfigError, mxnet_reason
from .job import check_depth, check_memory, contexts_for, network_config
from .model_info import DATASETS
from .params import load_exact


@dataclasses.dataclass(frozen=True)
class Model:
    symbol: mx.sym.Symbol
    arg_params: dict               # None: no weights given (export initialises them)
    aux_params: dict
    network: str                   # registered name (None for a --symbol graph of unknown kind)
    config: dict
    num_classes: int
    dataset: str
    data_dir: str
    preprocessing: recipes.Preprocessing
    params_file: str               # where the weights came from (None: none)
    contexts: tuple

    @property
    def data_shape(self):
        return tuple(self.preprocessing.data_shape)

    def class_names(self):
        """Class names in label order from synsets.txt beside the data (tools/make_rec.sh writes
        it; CIFAR's come from the archive's batches.meta), else None."""
        path = os.path.join(self.data_dir, "synsets.txt")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        return names if len(names) == self.num_classes else None

    def check_data(self, record=None):
        """ConfigError when the data set in data_dir does not fit the model: another number of
        classes, or (given a RecordFile) stored images of another size where the validation
        reader takes them as stored."""
        classes, source = dataset_classes(self.data_dir)
        if classes is not None and classes != self.num_classes:
            raise ConfigError(f"--data-dir {self.data_dir}: the data set has {classes} classes "
                              f"({source}) but the model has {self.num_classes}")
        if record is None or self.preprocessing.augment:
            return
        shape, wanted = first_image_shape(record), tuple(self.data_shape[1:])
        if shape is not None and shape != wanted:
            raise ConfigError(f"{record.rec}: images of {shape[0]}x{shape[1]} pixels (the first "
                              f"record), but the model takes {wanted[0]}x{wanted[1]} as stored "
                              "(its validation reader does not resize)")


def add_model_arguments(parser, weights_required=True):
    """The model flags shared by the after-training tools."""
    add_network_arguments(parser)
    model = parser.add_argument_group("model")
    model.add_argument("--symbol", help="a saved graph (PREFIX-symbol.json, e.g. the authors' "
                                        "released one) instead of building --network")
    model.add_argument("--model-prefix", help="checkpoint prefix of a training run")
    model.add_argument("--load-epoch", type=int,
                       help="checkpoint epoch (default: the latest under --model-prefix)")
    model.add_argument("--params", help="a parameter file instead of --model-prefix/--load-epoch "
                                        "(loaded by name, e.g. one of the authors')")
    model.add_argument("--num-classes", type=positive_int,
                       help="classes (default: the checkpoint's, else the synsets.txt beside "
                            "the data of given weights, else the dataset's)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS,
                      help="what the model was trained on: picks the validation preprocessing "
                           "(default: the checkpoint's; imagenet for ImageNet networks, else "
                           "cifar10)")
    data.add_argument("--data-dir", help="directory with the records and synsets.txt (default: "
                                         "the checkpoint's, else data/<dataset>)")
    data.add_argument("--mean-rgb", type=rgb, help="per-channel mean subtracted, 'R,G,B' "
                                                   "(default: the checkpoint's, else the recipe's)")
    data.add_argument("--std-rgb", type=positive_rgb,
                      help="per-channel std divided by, 'R,G,B' (default: the checkpoint's, else "
                           "the recipe's; 1,1,1 for the authors' released IGCV1 weights, which "
                           "were trained on mean-subtracted pixels)")
    data.add_argument("--gpus", type=gpu_list, default=default_gpus(),
                      help="comma list of GPU ids; '' runs on the CPU")
    parser.set_defaults(weights_required=weights_required)
    return parser


def _params_file(args):
    if args.params and (args.model_prefix or args.load_epoch is not None):
        raise ConfigError("give either --params or --model-prefix/--load-epoch, not both")
    if args.params:
        if not os.path.isfile(args.params):
            raise ConfigError(f"--params {args.params}: file not found")
        verify_params_file(args.params)
        return args.params
    if args.model_prefix is None:
        if args.load_epoch is not None:
            raise ConfigError("--load-epoch needs --model-prefix")
        if args.weights_required:
            raise ConfigError("give the weights: --model-prefix PREFIX [--load-epoch N] or "
                              "--params FILE")
        return None
    checkpoints = Checkpoints(args.model_prefix)
    epoch = args.load_epoch
    if epoch is None:
        epochs = checkpoints.epochs()
        if not epochs:
            raise ConfigError(f"--model-prefix {args.model_prefix}: no checkpoint "
                              f"({checkpoints.params_path(1)} and the like) found")
        epoch = epochs[-1]
    path = checkpoints.params_path(epoch)
    if not os.path.isfile(path):
        raise ConfigError(f"--load-epoch {epoch}: {path} not found")
    checkpoints.verify(epoch)
    return path


def released_network(symbol_file):
    """(network, config) of a released graph file by its name (None when it is not one)."""
    base = os.path.basename(symbol_file or "")
    for row in RELEASED_CHECKPOINTS:
        if row.symbol_file == base:
            return row.network, dict(row.config)
    return None


def _network_and_config(args, info):
    """(name, config) from --network and its flags, else the checkpoint's, else a released
    graph's file name; (None, {}) when nothing names the network."""
    name = args.network or info.get("network")
    if name is None:
        return released_network(args.symbol) or (None, {})
    recorded = info.get("config", {}) if info.get("network") == name else {}
    given = network_config(argparse.Namespace(**{**vars(args), "network": name}))
    return name, {**recorded, **given}


def _num_classes(args, info, dataset, data_dir, weights):
    if args.num_classes:
        return args.num_classes
    if info.get("num_classes"):
        return int(info["num_classes"])
    # Weights fit the data they were trained on; a graph without them (an export with random
    # weights) must not take its size from whatever records lie in data/.
    synsets = os.path.join(data_dir, "synsets.txt")
    if weights and os.path.isfile(synsets):
        with open(synsets) as f:
            return sum(1 for line in f if line.strip())
    if dataset in recipes.CIFAR_DATASETS:
        return recipes.CIFAR_DATASETS[dataset]["num_classes"]
    if dataset == folder.DATASET:
        return len(folder.read_folder_set(data_dir).class_names)
    return 1000


def _load_symbol(path):
    if not os.path.isfile(path):
        raise ConfigError(f"--symbol {path}: file not found")
    try:
        utility.load_ops()  # the released IGCV1 graphs hold Reorder nodes
    except utility.OpsLibraryError:
        pass  # a graph without the plugin's ops still loads; one with them fails below
    try:
        return mx.sym.load(path)
    except mx.base.MXNetError as err:
        raise ConfigError(f"--symbol {path}: not a loadable MXNet graph "
                          f"({mxnet_reason(err)})") from None
    except ValueError as err:  # UnicodeDecodeError: a binary file
        raise ConfigError(f"--symbol {path}: not a JSON graph ({err})") from None


def resolve_model(args):
    """The Model the flags describe; ConfigError naming the flag or file otherwise."""
    params_file = _params_file(args)
    info = {}
    if args.model_prefix and not args.params:
        info = Checkpoints(args.model_prefix).model_info() or {}
    name, config = _network_and_config(args, info)
    if name is None:
        hint = f" ({Checkpoints(args.model_prefix).model_info_path} not found)" \
            if args.model_prefix else ""
        raise ConfigError(f"name the network with --network{hint}: its family's validation "
                          "preprocessing depends on it")
    try:
        kind = network.network_info(name)["dataset_kind"]
    except ValueError as err:
        raise ConfigError(f"--network: {err}") from None
    dataset = args.dataset or info.get("dataset") or ("imagenet" if kind == "imagenet"
                                                      else "cifar10")
    if (dataset == "imagenet") != (kind == "imagenet"):
        raise ConfigError(f"--dataset {dataset}: network {name!r} is a {kind} network")
    data_dir = args.data_dir or info.get("data_dir") or os.path.join(
        utility.PROJECT_DIR, "data", dataset)
    num_classes = _num_classes(args, info, dataset, data_dir, params_file)

    if info and info.get("network") == name and info.get("dataset") == dataset:
        # What this run's validation used (its flags may have overridden the recipe).
        preprocessing = recipes.Preprocessing(tuple(info["mean_rgb"]), tuple(info["std_rgb"]),
                                              tuple(info["data_shape"]), info["val_augment"])
    elif dataset == folder.DATASET:
        preprocessing = folder.folder_preprocessing(folder.read_folder_set(data_dir))
    else:
        preprocessing = recipes.validation_preprocessing(name, dataset)
    given = {key: tuple(value) for key, value in
             (("mean_rgb", args.mean_rgb), ("std_rgb", args.std_rgb)) if value is not None}
    preprocessing = dataclasses.replace(preprocessing, **given)

    if args.symbol:
        symbol = _load_symbol(args.symbol)
    else:
        check_depth(name, config)
        try:
            symbol = network.get_symbol(name, num_classes, **config)
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"--network {name}: {err}") from None
        check_memory(name, config, symbol, preprocessing.data_shape, copies=3)
    data_shape = (1,) + tuple(preprocessing.data_shape)
    try:
        _, out_shapes, _ = symbol.infer_shape(data=data_shape)
    except mx.base.MXNetError as err:
        raise ConfigError(f"the graph does not take input {data_shape}: "
                          f"{mxnet_reason(err)}") from None
    if not out_shapes or len(out_shapes[0]) != 2:
        raise ConfigError(f"the graph does not end in class scores for input {data_shape}")
    num_classes = out_shapes[0][1]
    arg_params = aux_params = None
    if params_file:
        flag = "--params" if args.params else "checkpoint"
        arg_params, aux_params = load_exact(params_file, symbol, data_shape, flag)
    return Model(symbol, arg_params, aux_params, name, config, num_classes, dataset, data_dir,
                 preprocessing, params_file, contexts_for(args.gpus))
