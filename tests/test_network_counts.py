"""Parameter and multiply-add counts against the authors' figures (the IGCV1 counting tool of
hellozting/InterleavedGroupConvolutions, the released graphs, the IGCV1/IGCV3 papers; the table
in docs/zoo.md), for our builders and for the released graphs themselves."""
import os

import mxnet as mx
import pytest

import network
import utility
from network.released import RELEASED_CHECKPOINTS

CIFAR = (1, 3, 32, 32)
IMAGENET = (1, 3, 224, 224)

# The IGCV1 authors' counting tool (10 classes).
CIFAR_PARAMS = [
    ("plain_igc", dict(depth=38, primary_partition=24, secondary_partition=2), 317_242),
    ("plain", dict(depth=8, width=16), 75_290),
    ("plain", dict(depth=38, width=16), 561_370),
    ("plain_igc", dict(depth=20, primary_partition=24, secondary_partition=2), 155_962),
    ("resnet", dict(depth=20, width=16), 272_474),
    ("resnet_igc", dict(depth=20, primary_partition=24, secondary_partition=2), 164_410),
    ("resnet_igc", dict(depth=38, primary_partition=24, secondary_partition=2), 325_690),
]


def _ids(cases):
    return [f"{c[0]}-{'-'.join(f'{k}{v}' for k, v in c[1].items())}" for c in cases]


@pytest.mark.parametrize("name,config,expected", CIFAR_PARAMS, ids=_ids(CIFAR_PARAMS))
def test_cifar_parameter_count_matches_the_authors_tool(name, config, expected):
    symbol = network.get_symbol(name, 10, permutation="reshape", **config)
    assert utility.count_params(symbol, CIFAR)["total"] == expected


RELEASED_IDS = [c.symbol_file.split("-symbol")[0] for c in RELEASED_CHECKPOINTS]


@pytest.mark.parametrize("checkpoint", RELEASED_CHECKPOINTS, ids=RELEASED_IDS)
def test_imagenet_counts_of_our_builders_equal_the_released_graphs(checkpoint):
    symbol = network.get_symbol(checkpoint.network, 1000, permutation="reshape",
                                **checkpoint.config)
    assert utility.count_params(symbol, IMAGENET)["total"] == checkpoint.params
    assert utility.count_macs(symbol, IMAGENET)["total"] == pytest.approx(checkpoint.macs,
                                                                          rel=5e-4)


@pytest.mark.parametrize("checkpoint", RELEASED_CHECKPOINTS, ids=RELEASED_IDS)
def test_counting_works_on_the_released_graphs(ops, released_symbols_dir, checkpoint):
    symbol = mx.sym.load(os.path.join(released_symbols_dir, checkpoint.symbol_file))
    assert utility.count_params(symbol, IMAGENET)["total"] == checkpoint.params
    assert utility.count_macs(symbol, IMAGENET)["total"] == pytest.approx(checkpoint.macs,
                                                                          rel=5e-4)


def test_the_zoo_table_lists_every_released_checkpoint_with_its_counts():
    zoo = open(os.path.join(os.path.dirname(__file__), "..", "docs", "zoo.md")).read()
    for checkpoint in RELEASED_CHECKPOINTS:
        row = next((line for line in zoo.splitlines()
                    if line.startswith("|") and f"`{checkpoint.symbol_file}`" in line), None)
        assert row is not None, checkpoint.symbol_file
        assert f"{checkpoint.params:,}" in row and checkpoint.repository in row, row
        assert f"`{checkpoint.network}`" in row, row


def test_parameter_split_of_resnet18_by_layer_kind():
    # Independent arithmetic: FC 512*1000 + 1000; BN gamma+beta over 4800 channels (stem 64,
    # 4 units x 64, 4 x 128 + proj 128, 4 x 256 + 256, 4 x 512 + 512); the rest is conv.
    counts = utility.count_params(network.get_symbol("resnet_imgnet_d18", 1000), IMAGENET)
    assert counts["fc"] == 513_000
    assert counts["bn"] == 2 * 4800
    assert counts["conv"] == 11_689_512 - 513_000 - 9600
    assert counts["total"] == counts["conv"] + counts["fc"] + counts["bn"]


def test_macs_of_a_single_group_conv_and_fc_by_hand():
    data = mx.sym.var("data")
    net = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                             num_group=2, no_bias=True, name="c")
    net = mx.sym.FullyConnected(mx.sym.Flatten(net), num_hidden=5, name="fc")
    macs = utility.count_macs(net, (4, 6, 10, 10))
    # Conv: 8 x 5 x 5 outputs, each (6 / 2) x 3 x 3 MACs; FC: 200 inputs x 5 outputs; per sample.
    assert macs == {"conv": 8 * 25 * 27, "fc": 200 * 5, "total": 8 * 25 * 27 + 1000}
    params = utility.count_params(net, (4, 6, 10, 10))
    assert params == {"conv": 8 * 3 * 9, "fc": 200 * 5 + 5, "bn": 0, "total": 216 + 1005}


def test_mobilenetv2_counts_authors_and_standard():
    authors = network.get_symbol("mobilenetv2", 1000, permutation="reshape")
    standard = network.get_symbol("mobilenetv2", 1000, t1_expansion=False,
                                  permutation="reshape")
    assert utility.count_params(authors, IMAGENET)["total"] == 3_505_960
    assert utility.count_params(standard, IMAGENET)["total"] == 3_504_872
    # Standard MobileNetV2's well-known 300.8M multiply-adds.
    assert utility.count_macs(standard, IMAGENET)["total"] == pytest.approx(300.8e6, rel=1e-3)


@pytest.mark.parametrize("depth_multiplier,millions", [(1.0, 2.2), (0.7, 1.7), (0.5, 1.2)])
def test_igcv3_cifar_depth_variants_hit_the_readme_sizes(depth_multiplier, millions):
    symbol = network.get_symbol("igcv3_cifar", 10, depth_multiplier=depth_multiplier,
                                permutation="reshape")
    assert utility.count_params(symbol, CIFAR)["total"] / 1e6 == pytest.approx(millions, abs=0.05)


def test_width_multiplier_rounds_every_width_once_to_an_even_number():
    rows = network.get_plan("igcv3", width_multiplier=0.7)
    # 32*.7=22.4 -> 22; 16*.7=11.2 -> 12; 24*.7=16.8 -> 16; 96*.7=67.2 -> 68; 1280*.7 = 896.
    assert [r.width for r in rows] == [22, 12, 16, 22, 44, 68, 112, 224, 896]
    symbol = network.get_symbol("igcv3", 1000, width_multiplier=0.7, permutation="reshape")
    shapes = dict(zip(symbol.list_arguments(), symbol.infer_shape(data=IMAGENET)[0]))
    # Expansion of seq-1 is 6 x the scaled 12 channels (not scaled a second time).
    assert shapes["seq-1-block0-exp-conv2d_weight"] == (72, 6, 1, 1)


def test_summary_command_prints_stage_rows_that_add_up_to_the_totals(capsys):
    from network.__main__ import main
    assert main(["plain_igc", "--depth", "38", "--primary-partition", "24",
                 "--secondary-partition", "2"]) == 0
    out = capsys.readouterr().out
    assert "params: total 317,242" in out
    stage_params = [int(line.split()[-2].replace(",", "")) for line in out.splitlines()
                    if line.split() and line.split()[0] in ("g0", "g1", "g2", "g3",
                                                            "classifier")]
    assert len(stage_params) == 5 and sum(stage_params) == 317_242
    assert "L=24 M=8" in out  # stage 3's secondary partition is 4M


def test_summary_command_rejects_a_bad_value_with_its_name(capsys):
    from network.__main__ import main
    assert main(["resnet", "--depth", "21"]) == 2
    assert "21" in capsys.readouterr().err
