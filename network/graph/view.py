"""The one view of an MXNet symbol that the rewrites and the ONNX writer walk: nodes, readers,
shapes (when given an input shape) and channel permutations, and a node-by-node rebuild."""
import json

import mxnet as mx
import numpy as np

SPLIT, SWAP, MERGE = ("Reshape", "reshape"), ("SwapAxis", "swapaxes"), ("Reshape", "reshape")


def is_true(text, default=False):
    """An MXNet boolean attribute ("True", "1", "false", ...); `default` when absent."""
    return default if text is None else str(text).strip().lower() in ("true", "1")


def int_tuple(text, default=()):
    """An MXNet tuple attribute ("(3, 3)", "[1,1]", "(3,)") as ints; `default` when absent."""
    if text is None:
        return tuple(default)
    text = text.strip("()[] ")
    return tuple(int(v) for v in text.split(",") if v.strip() and v.strip() != "None")


def permutation_source(channels, groups):
    """src with out[:, c] = in[:, src[c]] for the permutation with `groups` branches
    (out[:, j*g + i] = in[:, i*(C/g) + j]); its inverse is permutation_source(C, C/g)."""
    return np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)


def to_numpy(params):
    return {k: (v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)) for k, v in params.items()}


def stock_node(node, inputs, attrs=None):
    """The outputs of `node` (a variable, or its op over `inputs`, with `attrs` if given)."""
    if node["op"] == "null":  # attributes kept: a plugin op's weights need their __shape__
        return [mx.sym.var(node["name"], attr=dict(node.get("attrs", {})) or None)]
    attrs = dict(node.get("attrs", {})) if attrs is None else attrs
    sym = getattr(mx.sym, node["op"])(*inputs, name=node["name"], **attrs)
    return [sym[k] for k in range(len(sym.list_outputs()))]


class Graph:
    """Nodes as in the symbol's JSON, the readers of every output and, given `data_shape`, the
    inferred output shape of every node."""

    def __init__(self, symbol, data_shape=None):
        graph = json.loads(symbol.tojson())
        self.nodes = graph["nodes"]
        self.heads = [tuple(h[:2]) for h in graph["heads"]]
        self.readers = {}  # (node, output) -> ids of the nodes that read it
        for i, node in enumerate(self.nodes):
            for entry in node["inputs"]:
                self.readers.setdefault(tuple(entry[:2]), []).append(i)
        self.shapes = {}
        if data_shape is not None:
            internals = symbol.get_internals()
            _, shapes, _ = internals.infer_shape(data=tuple(data_shape))
            if shapes is None:
                raise ValueError(f"cannot infer the graph's shapes for input {tuple(data_shape)}")
            self.shapes = dict(zip(internals.list_outputs(), (tuple(s) for s in shapes)))

    def name(self, entry):
        return self.nodes[entry[0]]["name"]

    def attrs(self, i):
        return self.nodes[i].get("attrs", {})

    def op(self, i):
        return self.nodes[i]["op"]

    def input_names(self, i):
        return [self.name(e) for e in self.nodes[i]["inputs"]]

    def shape(self, i):
        node = self.nodes[i]
        return self.shapes[node["name"] + ("" if node["op"] == "null" else "_output")]

    def readers_of(self, entry, ignore=("BatchNormMoments",)):
        readers = [r for r in self.readers.get(tuple(entry), []) if self.op(r) not in ignore]
        return readers + (["head"] if tuple(entry) in self.heads else [])

    def only_reader(self, i, ops):
        """The one node reading node i's first output, when it is not a graph output and its op
        is among `ops`; else None."""
        readers = self.readers_of((i, 0))
        if len(readers) == 1 and readers[0] != "head" and self.op(readers[0]) in ops:
            return readers[0]
        return None

    def permutation(self, i):
        """(groups, start, first) when node i's output is a channel permutation of node
        start's output that nothing else reads on the way (`first`: its node reading start):
        Reorder(g), or the pure-symbol reshape (0, -4, g, -1, -2) -> swapaxes(1, 2) ->
        reshape (0, -3, -2) ending in i; else None."""
        node = self.nodes[i]
        if node["op"] == "Reorder":
            return int(self.attrs(i)["branch_factor"]), node["inputs"][0][0], i
        if node["op"] not in MERGE or int_tuple(self.attrs(i).get("shape"))[:2] != (0, -3):
            return None
        swap = node["inputs"][0][0]
        axes = {int(self.attrs(swap).get(k, 0)) for k in ("dim1", "dim2")}
        if self.op(swap) not in SWAP or axes != {1, 2} or self.readers_of((swap, 0)) != [i]:
            return None
        split = self.nodes[swap]["inputs"][0][0]
        shape = int_tuple(self.attrs(split).get("shape"))
        if (self.op(split) not in SPLIT or shape[:2] != (0, -4) or shape[3:] != (-1, -2)
                or shape[2] < 1 or self.readers_of((split, 0)) != [swap]):
            return None
        return shape[2], self.nodes[split]["inputs"][0][0], split

    def permutation_after(self, i):
        """(groups, end node id) of the permutation that alone reads node i's output, else
        None."""
        readers = self.readers_of((i, 0))
        if len(readers) != 1 or readers[0] == "head":
            return None
        first = readers[0]
        if self.op(first) == "Reorder":
            return self.permutation(first)[0], first
        swap = self.only_reader(first, SWAP)
        end = swap is not None and self.only_reader(swap, MERGE)
        found = end and self.permutation(end)
        return (found[0], end) if found else None

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
