"""Bad configurations and flags fail before training with one line naming the flag or file;
network config flags come from the registry."""
import json
import os

import pytest

import train_imagenet
import train_model
import training
from records import (
    cpu_args,
    make_records,
)

# ---------------------------------------------------------------------------------------------
# Bad configurations fail before training, naming the flag or file


@pytest.fixture
def bad_data(tmp_path):
    """Factory: a data dir with train/test records, broken in the requested way."""
    def make(kind):
        directory = tmp_path / kind
        train_labels = [12 if kind == "label" and i == 5 else i % 10 for i in range(40)]
        make_records(directory, "train", train_labels)
        make_records(directory, "test", [i % 10 for i in range(20)])
        if kind == "missing":
            os.remove(directory / "test.rec")
        if kind == "empty":
            open(directory / "train.rec", "w").close()
        if kind == "truncated_idx":
            # make_rec.sh's record of what it built, then the index cut at a line boundary.
            (directory / "make_rec.json").write_text(json.dumps(
                {"dataset": "demo", "counts": {"train": 40, "test": 20}}))
            lines = (directory / "train.idx").read_text().splitlines(keepends=True)
            (directory / "train.idx").write_text("".join(lines[:20]))
        return str(directory)
    return make


BAD_CONFIGS = [
    ("unknown_network", [], ["--network", "no_such_net"], "unknown network 'no_such_net'"),
    ("bad_depth", [], ["--depth", "7"], "--network plain_igc"),
    ("zero_partition", [], ["--primary-partition", "0"], "--primary-partition"),
    ("flag_not_for_network", [], ["--width", "16"], "--width does not apply to network"),
    ("missing_file", "missing", [], "test.rec not found"),
    ("empty_file", "empty", [], "train.rec is empty"),
    ("label_out_of_range", "label", [], "label(s) outside 0..9"),
    ("truncated_idx", "truncated_idx", [],
     "train.idx lists 20 records but make_rec.json says train has 40"),
    ("batch_too_large", "ok", ["--batch-size", "64"], "--batch-size 64 is larger than the 40"),
    ("dist_without_launcher", "ok", ["--kv-store", "dist_sync"], "tools/launch.py"),
    ("unknown_kv_store", "ok", ["--kv-store", "nccl2"], "--kv-store must be one of"),
    ("missing_load_epoch", "ok", ["--load-epoch", "3", "--num-epochs", "4"],
     "0003.params not found"),
]


@pytest.mark.parametrize("kind,data,extra,message", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_configuration_fails_before_training(kind, data, extra, message, bad_data, tmp_path,
                                                 capsys, ops):
    data_dir = bad_data(data or "ok")
    prefix = tmp_path / "run" / "m"
    with pytest.raises(SystemExit) as exit_info:
        train_model.main(cpu_args(data_dir, prefix, "--batch-size", "16", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not os.path.exists(f"{prefix}-symbol.json"), "training started"


BAD_NUMBERS = [("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--wd", "nan"), ("--wd", "-1"),
               ("--mean-rgb", "nan,120,110"), ("--std-rgb", "inf,60,60"),
               ("--std-rgb", "60,0,60"), ("--momentum", "5"), ("--momentum", "-1"),
               ("--momentum", "nan"), ("--lr-factor", "2"), ("--lr-factor", "inf"),
               ("--lr-factor", "0")]


@pytest.mark.parametrize("entry_point", [train_model, train_imagenet])
@pytest.mark.parametrize("flag,value", BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_nonfinite_or_out_of_range_numbers_are_refused_at_parse_time(entry_point, flag, value,
                                                                      capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry_point.build_parser().parse_args([flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and repr(value) in err, err


def test_edge_values_of_the_number_flags_are_accepted():
    args = train_model.build_parser().parse_args(
        ["--lr-factor", "1", "--momentum", "0", "--wd", "0", "--mean-rgb=-1,0,1e3"])
    assert (args.lr_factor, args.momentum, args.wd, args.mean_rgb) == (1.0, 0.0, 0.0,
                                                                       (-1.0, 0.0, 1000.0))


def test_lr_steps_at_or_after_the_last_epoch_are_named_in_a_warning(small_demo_dir, tmp_path,
                                                                    ops):
    prefix = tmp_path / "m"
    train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "2", "--batch-size", "32",
                              "--lr-steps", "1,2,5"))
    log = open(f"{prefix}.log").read()
    assert "--lr-steps 2,5: not before the last epoch (--num-epochs 2)" in log, log


def test_another_num_epochs_gets_the_default_schedule_not_the_presets_steps(small_demo_dir,
                                                                          tmp_path):
    # The demo preset's steps (6, 7) belong to its 8 epochs.
    job, _ = train_model.build_job(cpu_args(small_demo_dir, tmp_path / "m", "--num-epochs", "16"))
    assert job.optim.lr_steps == (8, 12, 14)
    job, _ = train_model.build_job(cpu_args(small_demo_dir, tmp_path / "m"))
    assert (job.optim.num_epochs, job.optim.lr_steps) == (8, (6, 7))


def test_explicit_lr_steps_win_over_the_recipes_lr_step_every():
    parse = lambda *argv: training.parse_with_presets(  # noqa: E731
        train_imagenet.build_parser(), ["--network", "igcv3", "--gpus", "", *argv],
        train_imagenet.presets)
    assert (parse().lr_steps, parse().lr_step_every) == (None, 1)
    args = parse("--lr-steps", "1,2")
    assert (args.lr_steps, args.lr_step_every) == ((1, 2), None)
    # Both given explicitly is still a mistake.
    args = parse("--lr-steps", "1,2", "--lr-step-every", "3")
    assert (args.lr_steps, args.lr_step_every) == ((1, 2), 3)


@pytest.mark.parametrize("entry_point", [train_model, train_imagenet])
def test_every_network_config_key_has_a_flag_with_its_choices(entry_point):
    import network
    actions = {a.dest: a for a in entry_point.build_parser()._actions}
    for name in network.list_networks():
        for key, option in network.network_options(name).items():
            assert option.flag in actions[key].option_strings, (name, key)
            assert actions[key].choices == option.choices, (name, key)
            assert actions[key].help, (name, key)
    assert set(actions["variant"].choices) == {"igc_l4m32", "igc_l16m16", "igc_l100m2"}
    assert set(actions["conv_impl"].choices) == {"auto", "mxnet", "igc"}


def test_a_builder_keyword_without_an_option_annotation_is_refused():
    from network.registry import register_network

    def builder(num_classes, ops, depth=20):
        raise AssertionError("never built")

    with pytest.raises(TypeError, match="depth"):
        register_network("unannotated_test_net", plan=None, dataset_kind="cifar",
                         family="plain", description="")(builder)
