"""The JSON view of an MXNet symbol that the inference rewrites walk: nodes, heads, readers."""
import json

import mxnet as mx
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

    def only_reader(self, i, ops):
        """The one node reading node i's first output, when it is not a graph output and its op
        is among `ops`; else None."""
        readers = self.readers_of((i, 0))
        if len(readers) == 1 and readers[0] != "head" and self.nodes[readers[0]]["op"] in ops:
            return readers[0]
        return None

    def rebuild(self, special):
        """The graph as a new symbol, node by node. `special(i, node, entry)` may return node
        i's outputs (a list of symbols; [] for a node nothing reads any more) instead of the
        node as it is; `entry` maps an input entry to the symbol already built for it."""
        built = {}

        def entry(e):
            return built[e[0]][e[1]]

        for i, node in enumerate(self.nodes):
            outputs = special(i, node, entry)
            if outputs is None:
                outputs = stock_node(node, [entry(e) for e in node["inputs"]])
            built[i] = outputs
        heads = [entry(h) for h in self.heads]
        return heads[0] if len(heads) == 1 else mx.sym.Group(heads)


def int_tuple(text, default=()):
    """An MXNet tuple attribute ("(3, 3)", "[1,1]", "(3,)") as ints; `default` when absent."""
    if text is None:
        return tuple(default)
    text = text.strip("()[] ")
    return tuple(int(v) for v in text.split(",") if v.strip() and v.strip() != "None")


def stock_node(node, inputs, attrs=None):
    """The outputs of `node` (a variable, or its op over `inputs`, with `attrs` if given)."""
    if node["op"] == "null":
        return [mx.sym.var(node["name"])]
    attrs = dict(node.get("attrs", {})) if attrs is None else attrs
    sym = getattr(mx.sym, node["op"])(*inputs, name=node["name"], **attrs)
    return [sym[k] for k in range(len(sym.list_outputs()))]
