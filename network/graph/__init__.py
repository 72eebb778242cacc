"""The inference graph: one view of a symbol (`view.Graph`), one BatchNorm fold, the IGCV3
rewrites, `optimize_for_inference` over them, and the ONNX writer that emits its result."""
from .optimize import optimize_for_inference
from .view import Graph, permutation_source

__all__ = ["Graph", "optimize_for_inference", "permutation_source"]
