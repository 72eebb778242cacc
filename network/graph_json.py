"""The JSON view of an MXNet symbol that the inference rewrites walk: nodes, heads, readers."""
import json

import numpy as np


def is_true(value):
    return str(value).lower() in ("true", "1")


def to_numpy(params):
    return {k: (v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)) for k, v in params.items()}


class Graph:
    def __init__(self, symbol):
        graph = json.loads(symbol.tojson())
        self.nodes = graph["nodes"]
        self.heads = [tuple(h[:2]) for h in graph["heads"]]
        self.readers = {}  # (node, output) -> ids of the nodes that read it
        for i, node in enumerate(self.nodes):
            for entry in node["inputs"]:
                self.readers.setdefault(tuple(entry[:2]), []).append(i)

    def name(self, entry):
        return self.nodes[entry[0]]["name"]

    def readers_of(self, entry, ignore=("BatchNormMoments",)):
        readers = [r for r in self.readers.get(tuple(entry), [])
                   if self.nodes[r]["op"] not in ignore]
        return readers + (["head"] if tuple(entry) in self.heads else [])
