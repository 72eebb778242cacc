"""The IGC network zoo: `get_symbol(name, num_classes, **config)` and friends.

Every builder is registered under its `--network` name with an explicit keyword signature;
`network_defaults(name)` lists the config keys a network accepts, `network_info(name)` its input
size, dataset kind and family. Run `python -m network NAME` for a per-stage summary.
"""
from . import igcv2, igcv3, plain, resnet  # noqa: F401  (registers the builders)
from .inference import optimize_for_inference
from .registry import (
                       config_options,
                       get_plan,
                       get_symbol,
                       list_networks,
                       network_defaults,
                       network_info,
                       network_options,
)

__all__ = ["config_options", "get_plan", "get_symbol", "list_networks", "network_defaults",
           "network_info", "network_options", "optimize_for_inference"]
