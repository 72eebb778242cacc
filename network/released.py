"""The authors' released ImageNet checkpoints and the builder call that reproduces each graph.

One row per released graph: its file name, where it was published, our network and config
(whose argument and auxiliary-state names and shapes equal the file's, so its `.params` load by
name), and the exact counts of that graph (learnable parameters; multiply-adds of conv + FC for
one 224x224 image), next to what the paper reports. The tests and the README read this table.
"""
from dataclasses import dataclass, field

IGCV1_REPO = "hellozting/InterleavedGroupConvolutions"
IGCV3_REPO = "homles11/IGCV3"


@dataclass(frozen=True)
class ReleasedCheckpoint:
    title: str                # as the paper's table names it
    symbol_file: str          # the released `*-symbol.json`
    repository: str           # the authors' GitHub repository that published it
    network: str
    config: dict = field(default_factory=dict)
    params: int = 0           # learnable parameters of the released graph
    macs: float = 0.0         # multiply-adds (conv + FC), one 224x224 image
    paper_params: str = ""    # the paper's figures, under its own counting convention
    paper_macs: str = ""


RELEASED_CHECKPOINTS = (
    ReleasedCheckpoint("ResNet-18 (C=64)", "resnet_d18-symbol.json", IGCV1_REPO,
                       "resnet_imgnet_d18", dict(width=64), 11_689_512, 1.814e9,
                       "11.151M", "1.8G"),
    ReleasedCheckpoint("ResNet-18 (C=69)", "resnet_d18_w69-symbol.json", IGCV1_REPO,
                       "resnet_imgnet_d18", dict(width=69), 13_542_457, 2.099e9,
                       "11.333M", "2.1G"),
    ReleasedCheckpoint("IGC-L4M32+Ident.", "resnet_gcwf_noshare_imagenet_d18b4-symbol.json",
                       IGCV1_REPO, "resnet_igc_imgnet_d18", dict(variant="igc_l4m32"),
                       12_251_240, 1.945e9, "11.205M", "1.9G"),
    ReleasedCheckpoint("IGC-L16M16+Ident.", "resnet_gcwf_noshare_imagenet_d18b16-symbol.json",
                       IGCV1_REPO, "resnet_igc_imgnet_d18", dict(variant="igc_l16m16"),
                       13_528_296, 2.266e9, "11.329M", "2.2G"),
    ReleasedCheckpoint("IGC-L100M2+Ident.", "resnet_gcwf_noshare_imagenet_d18b100-symbol.json",
                       IGCV1_REPO, "resnet_igc_imgnet_d18", dict(variant="igc_l100m2"),
                       8_637_900, 1.265e9, "8.61M", "1.3G"),
    ReleasedCheckpoint("IGCV3-D 1.0", "igcv3-symbol.json", IGCV3_REPO, "igcv3", {},
                       3_491_688, 313.0e6, "3.5M", "318M"),
)
