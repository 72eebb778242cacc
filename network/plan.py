"""Typed plan rows (one per stage, what `network.get_plan` returns and the builders follow) and
the one stage loop every family runs."""
import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A stage: `blocks` blocks of output width `width`, the first with stride `stride`; its
    layer names start with `prefix`."""
    stage: str
    prefix: str
    blocks: int
    width: int
    stride: int

    def structure(self):
        """{field: value} of what a family adds to the row (partitions, expansion, groups)."""
        base = {f.name for f in dataclasses.fields(Stage)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in base}


@dataclass(frozen=True, kw_only=True)
class IGCStage(Stage):
    """IGCV1: L primary partitions, M secondary partitions."""
    L: int
    M: int


@dataclass(frozen=True, kw_only=True)
class IGCV2Stage(Stage):
    """IGCV2: conv2's groups in the first block (G) and in the others (G_rest)."""
    G: int
    G_rest: int


@dataclass(frozen=True, kw_only=True)
class InvertedStage(Stage):
    """Inverted residual: expansion t, g groups of the 1x1 convs."""
    t: int
    groups: int


def run_stages(data, rows, kin, block):
    """The stage loop: data through `block(data, row, b, kin, stride)` for the b-th block
    (from 0) of every row, kin its input width, stride the row's in the first block and 1
    after. Returns (data, the last width)."""
    for row in rows:
        for b in range(row.blocks):
            data = block(data, row, b, kin, row.stride if b == 0 else 1)
            kin = row.width
    return data, kin
