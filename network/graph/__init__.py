"""The graph rewrites: one view of a symbol (`view.Graph`); for inference one BatchNorm fold, the
IGCV3 rewrites, `optimize_for_inference` over them, and the ONNX writer that emits its result;
for training `fuse_input_batchnorms`."""
from .optimize import optimize_for_inference
from .training import fuse_input_batchnorms
from .view import Graph, permutation_source

__all__ = ["Graph", "fuse_input_batchnorms", "optimize_for_inference", "permutation_source"]
