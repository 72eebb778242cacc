"""train_model.py / train_imagenet.py: real short runs, resume, crash safety, bad configurations,
data normalisation, the weight-decay rule and the schedule, each against an independent
reference (numpy arithmetic, the recipe's numbers, pixels written by the test)."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import mxnet as mx
import numpy as np
import pytest

import train_imagenet
import train_model
import training
from training import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MEAN = recipes.CIFAR_DATASETS["demo"]["mean_rgb"]
DEMO_STD = recipes.CIFAR_DATASETS["demo"]["std_rgb"]
# Small and quick on a 2-core CPU; the stem has 8 channels.
SMALL_NET = ["--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
             "--secondary-partition", "2"]
# Chance is 10% on the 10 demo classes.
DEMO_VAL_ACC_THRESHOLD = 30.0


def make_records(directory, name, labels, size=(32, 32), pixels=None, seed=0):
    """name.rec/.idx with one PNG per label; pixels(i) gives image i (HxWx3 RGB uint8)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(seed)
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(directory, name + ".idx"),
                                           os.path.join(directory, name + ".rec"), "w")
    for i, label in enumerate(labels):
        image = pixels(i) if pixels else rng.randint(0, 256, size + (3,)).astype(np.uint8)
        header = mx.recordio.IRHeader(0, float(label), i, 0)
        # pack_img encodes with OpenCV, which expects BGR.
        writer.write_idx(i, mx.recordio.pack_img(header, image[:, :, ::-1], img_fmt=".png"))
    writer.close()


def make_demo(directory, num_train, num_test):
    subprocess.run([os.path.join(ROOT, "tools", "make_rec.sh"), "demo", "--out", str(directory),
                    "--num-train", str(num_train), "--num-test", str(num_test)],
                   check=True, capture_output=True, timeout=120)
    return str(directory)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), 5000, 1000)


@pytest.fixture(scope="module")
def small_demo_dir(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("small_demo"), 320, 100)


def cpu_args(data_dir, prefix, *extra):
    return ["--dataset", "demo", "--data-dir", data_dir, "--gpus", "", "--model-prefix",
            str(prefix), "--rand-seed", "3", "--data-threads", "1", *SMALL_NET, *extra]


def read_params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


# ---------------------------------------------------------------------------------------------
# Real training


def test_short_training_on_demo_records_lowers_loss_and_beats_chance(demo_dir, tmp_path, ops):
    # 4 epochs x 156 batches of 32 = 624 steps; the last epoch at lr 0.01 lets the BN running
    # statistics (momentum 0.99 in the plain nets) catch up with the weights. Seeds 3 to 6 end
    # at 46-55 % validation accuracy.
    prefix = tmp_path / "m"
    history = train_model.main(cpu_args(demo_dir, prefix, "--num-epochs", "4",
                                        "--batch-size", "32", "--lr-steps", "3"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train-loss"] < 0.85 * history[0]["train-loss"]
    assert history[-1]["val-acc"] >= DEMO_VAL_ACC_THRESHOLD, history
    # The reported accuracy is that of the saved weights, scored here from the raw PNGs with
    # numpy normalisation and a freshly bound module.
    np.testing.assert_allclose(history[-1]["val-acc"], accuracy_of_checkpoint(
        str(prefix), 4, os.path.join(demo_dir, "test")), atol=0.11)


def accuracy_of_checkpoint(prefix, epoch, records):
    reader = mx.recordio.MXIndexedRecordIO(records + ".idx", records + ".rec", "r")
    images, labels = [], []
    for key in reader.keys:
        header, image = mx.recordio.unpack_img(reader.read_idx(key))  # BGR, as OpenCV decodes
        images.append(((image[:, :, ::-1] - np.array(DEMO_MEAN)) / np.array(DEMO_STD))
                      .transpose(2, 0, 1))
        labels.append(header.label)
    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    module = mx.mod.Module(symbol, context=mx.cpu())
    module.bind(data_shapes=[("data", (len(images), 3, 32, 32))], for_training=False,
                label_shapes=[("softmax_label", (len(images),))])
    module.set_params(arg_params, aux_params)
    module.forward(mx.io.DataBatch([mx.nd.array(np.stack(images))]), is_train=False)
    predicted = module.get_outputs()[0].asnumpy().argmax(axis=1)
    return 100.0 * float(np.mean(predicted == np.array(labels)))


def test_train_imagenet_reports_top1_and_top5_for_igcv1_and_igcv3(tmp_path, ops):
    data = tmp_path / "imagenet"
    rng = np.random.RandomState(0)
    # 10 classes of flat colours with noise, stored at 48x64: the iterator resizes and crops.
    colour = lambda label: (np.array([25 * label, 255 - 25 * label, 128]) +  # noqa: E731
                            rng.randint(-20, 20, (48, 64, 3))).clip(0, 255).astype(np.uint8)
    train_labels, val_labels = [i % 10 for i in range(8)], [i % 10 for i in range(4)]
    make_records(data, "train", train_labels, pixels=lambda i: colour(train_labels[i]))
    make_records(data, "val", val_labels, pixels=lambda i: colour(val_labels[i]))
    (data / "synsets.txt").write_text("".join(f"n{i:08d}\n" for i in range(10)))
    # The authors' --depth=18 for the *_d18 network is accepted (the name already says it).
    for name, net in (("igcv1", ["--network", "resnet_igc_imgnet_d18", "--depth", "18",
                                 "--primary-partition", "2", "--secondary-partition", "4"]),
                      ("igcv3", ["--network", "igcv3", "--width-multiplier", "0.25"])):
        prefix = tmp_path / name / "model"
        history = train_imagenet.main(
            [*net, "--data-dir", str(data), "--gpus", "", "--batch-size", "4",
             "--test-batch-size", "4", "--num-epochs", "1", "--model-prefix", str(prefix),
             "--rand-seed", "0", "--data-threads", "1"])
        (epoch,) = history
        assert 0 <= epoch["val-acc"] <= epoch["val-top5-acc"] <= 100
        log = open(f"{prefix}.log").read()
        assert "val-acc=" in log and "val-top5-acc=" in log
        # The class count comes from synsets.txt: the classifier has 10 outputs.
        assert read_params(f"{prefix}-0001.params")["arg:fc_score_weight" if name == "igcv1"
                                                     else "arg:fc_weight"].shape[0] == 10


# ---------------------------------------------------------------------------------------------
# Resume and checkpoints


def lrs_in_log(path):
    return [float(m) for m in re.findall(r"Epoch\[\d+/\d+\] .* lr=([\d.e-]+)", open(path).read())]


def test_resume_matches_uninterrupted_run(small_demo_dir, tmp_path, ops):
    common = ["--batch-size", "32", "--lr-steps", "2,3", "--checkpoint-epochs", "1"]
    straight = train_model.main(cpu_args(small_demo_dir, tmp_path / "a" / "m",
                                         "--num-epochs", "4", *common))
    first = train_model.main(cpu_args(small_demo_dir, tmp_path / "b" / "m",
                                      "--num-epochs", "2", *common))
    second = train_model.main(cpu_args(small_demo_dir, tmp_path / "b" / "m",
                                       "--num-epochs", "4", "--resume", *common))
    assert [h["epoch"] for h in straight] == [1, 2, 3, 4]
    assert [h["epoch"] for h in first + second] == [1, 2, 3, 4]
    expected_lr = [0.1, 0.1, 0.01, 0.001]  # x0.1 after epochs 2 and 3
    np.testing.assert_allclose([h["lr"] for h in first + second], expected_lr, rtol=1e-6)
    np.testing.assert_allclose(lrs_in_log(tmp_path / "b" / "m.log"), expected_lr, rtol=1e-6)
    a = read_params(tmp_path / "a" / "m-0004.params")
    b = read_params(tmp_path / "b" / "m-0004.params")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # Training did move the weights: resuming from scratch would not pass by accident.
    start = read_params(tmp_path / "b" / "m-0002.params")
    assert any(not np.allclose(start[k], b[k]) for k in b if k.startswith("arg:"))


def test_load_epoch_continues_from_that_checkpoint(small_demo_dir, tmp_path, ops):
    prefix = tmp_path / "m"
    train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "1", "--batch-size", "32"))
    history = train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "2",
                                        "--batch-size", "32", "--load-epoch", "1"))
    assert [h["epoch"] for h in history] == [2]
    assert os.path.isfile(f"{prefix}-0002.params")


KILLED_DRIVER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import mxnet as mx
    import train_model

    real_save, calls = mx.nd.save, []

    def save_then_hang(fname, data):
        # The second checkpoint: write it, cut it in half, then wait to be killed, as if the
        # power went off in the middle of the write.
        real_save(fname, data)
        calls.append(fname)
        if len(calls) == 2:
            with open(fname, "r+b") as f:
                f.truncate(os.path.getsize(fname) // 2)
            open({marker!r}, "w").close()
            time.sleep(600)

    mx.nd.save = save_then_hang
    train_model.main({argv!r})
""")


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(small_demo_dir, tmp_path,
                                                                   ops):
    prefix, marker = tmp_path / "m", tmp_path / "writing"
    argv = cpu_args(small_demo_dir, prefix, "--num-epochs", "3", "--batch-size", "32",
                    "--checkpoint-epochs", "1")
    driver = tmp_path / "driver.py"
    driver.write_text(KILLED_DRIVER.format(root=ROOT, marker=str(marker), argv=argv))
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "training exited before its second checkpoint"
            assert time.time() < deadline, "second checkpoint never started"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not os.path.exists(f"{prefix}-0002.params"), "a half-written checkpoint is visible"
    first = read_params(f"{prefix}-0001.params")
    assert any(k.startswith("arg:") for k in first)
    history = train_model.main(argv + ["--resume"])
    assert [h["epoch"] for h in history] == [2, 3]
    assert f"continuing from {prefix}-0001.params" in open(f"{prefix}.log").read()
    assert set(read_params(f"{prefix}-0003.params")) == set(first)


def test_diverging_loss_stops_with_epoch_and_batch(small_demo_dir, tmp_path, capsys, ops):
    with pytest.raises(SystemExit) as exit_info:
        train_model.main(cpu_args(small_demo_dir, tmp_path / "m", "--num-epochs", "1",
                                  "--batch-size", "32", "--lr", "1e30"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "training loss is nan at epoch 1, batch" in err, err
    assert "Traceback" not in err


def _can_mount_tmpfs():
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(),
                                 reason="needs `unshare -rm` to mount a private tmpfs")

FULL_DISK_DRIVER = textwrap.dedent("""
    import errno, json, os, sys, threading, time
    sys.path.insert(0, {root!r})
    import mxnet as mx
    import train_model

    prefix, room = {prefix!r}, {room!r}

    def fill_disk_after_first_checkpoint():
        # As another program filling the disk while epoch 2 trains.
        while not os.path.exists(prefix + "-0001.params"):
            time.sleep(0.05)
        with open(os.path.join(os.path.dirname(prefix), "filler"), "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
            f.truncate(max(0, f.tell() - room))

    threading.Thread(target=fill_disk_after_first_checkpoint, daemon=True).start()
    try:
        train_model.main({argv!r})
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    try:
        mx.model.load_checkpoint(prefix, 1)
        loads = True
    except Exception:
        loads = False
    json.dump(dict(code=code, loads=loads, files=sorted(os.listdir(os.path.dirname(prefix)))),
              open({result!r}, "w"))
""")


@needs_tmpfs
@pytest.mark.parametrize("room", [0, 20480], ids=["no_room", "room_for_the_symbol_only"])
def test_full_disk_at_a_checkpoint_keeps_the_previous_one_and_says_so(small_demo_dir, tmp_path,
                                                                      room, ops):
    disk, result = tmp_path / "disk", tmp_path / "result.json"
    disk.mkdir()
    prefix = str(disk / "m")
    # The log lives off the small disk: only the checkpoint writes meet the full disk.
    argv = cpu_args(small_demo_dir, prefix, "--num-epochs", "2", "--batch-size", "32",
                    "--checkpoint-epochs", "1", "--log-file", str(tmp_path / "m.log"))
    driver = tmp_path / "driver.py"
    driver.write_text(FULL_DISK_DRIVER.format(root=ROOT, prefix=prefix, room=room, argv=argv,
                                              result=str(result)))
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs "$1" && exec "$2" "$3"',
         "sh", str(disk), sys.executable, str(driver)],
        capture_output=True, text=True, timeout=300)
    outcome = json.loads(result.read_text())
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert outcome["code"] == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert errors == [f"driver.py: error: cannot write checkpoint {prefix}-0002.params: the "
                      f"disk holding {disk} is full; the last complete checkpoint, "
                      f"{prefix}-0001.params, is intact"], proc.stderr
    assert outcome["loads"], "the earlier checkpoint no longer loads"
    assert not [f for f in outcome["files"] if f.startswith(("m-0002", ".m-"))], outcome


@needs_tmpfs
def test_read_only_model_prefix_fails_before_training(small_demo_dir, tmp_path):
    disk = tmp_path / "ro"
    disk.mkdir()
    argv = cpu_args(small_demo_dir, disk / "run" / "m", "--num-epochs", "1", "--batch-size", "32")
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"',
         "sh", str(disk), sys.executable, os.path.join(ROOT, "train_model.py"), *argv],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"--model-prefix: cannot write under {disk}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Epoch[" not in proc.stdout


@pytest.mark.parametrize("flag", ["--model-prefix", "--log-file"])
def test_model_prefix_or_log_under_a_file_fails_before_training(small_demo_dir, tmp_path,
                                                                 capsys, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    target = blocker / "m"
    extra = ["--log-file", str(tmp_path / "m.log")] if flag == "--model-prefix" else \
        ["--log-file", str(target) + ".log"]
    prefix = target if flag == "--model-prefix" else tmp_path / "m"
    with pytest.raises(SystemExit) as exit_info:
        train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "1", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag}: cannot create" in err and f"{blocker} is not a directory" in err, err
    assert "Traceback" not in err


def test_truncated_states_falls_back_to_the_previous_checkpoint(small_demo_dir, tmp_path, ops):
    prefix = tmp_path / "m"
    common = ["--batch-size", "32", "--checkpoint-epochs", "1"]
    train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "2", *common))
    states = f"{prefix}-0002.states"
    with open(states, "r+b") as f:
        f.truncate(os.path.getsize(states) // 2)
    history = train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "3", "--resume",
                                        *common))
    assert [h["epoch"] for h in history] == [2, 3]
    log = open(f"{prefix}.log").read()
    assert f"optimizer state {states} is unreadable" in log
    assert f"continuing from {prefix}-0001.params" in log


def test_fresh_start_moves_a_later_runs_checkpoints_aside(small_demo_dir, tmp_path, ops):
    prefix = tmp_path / "m"
    common = ["--batch-size", "32", "--checkpoint-epochs", "1"]
    train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "3", *common))
    # A new run under the same prefix, without --resume, stops after one epoch ...
    fresh = train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "1",
                                      "--rand-seed", "9", *common))
    assert [h["epoch"] for h in fresh] == [1]
    # ... and --resume continues it, not the first run's epoch 3.
    resumed = train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "2", "--resume",
                                        *common))
    assert [h["epoch"] for h in resumed] == [2]
    (stale,) = [p for p in os.listdir(tmp_path) if p.startswith("m.stale-")]
    assert sorted(os.listdir(tmp_path / stale)) == [f"m-000{e}.{kind}" for e in (1, 2, 3)
                                                    for kind in ("params", "states")]
    assert f"moved them to {tmp_path / stale}" in open(f"{prefix}.log").read()


def test_temporaries_of_dead_runs_are_removed_and_live_ones_kept(small_demo_dir, tmp_path, ops):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    left = tmp_path / f".m-0004.params.tmp{dead.pid}"
    live = tmp_path / f".m-symbol.json.tmp{alive.pid}"
    other = tmp_path / f".other-0001.params.tmp{dead.pid}"
    for path in (left, live, other):
        path.write_bytes(b"partial")
    try:
        train_model.main(cpu_args(small_demo_dir, tmp_path / "m", "--num-epochs", "1",
                                  "--batch-size", "32"))
    finally:
        alive.kill()
        alive.wait()
    assert not left.exists()
    assert live.exists() and other.exists()
    assert f"removed {left}" in open(tmp_path / "m.log").read()


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

    def builder(num_classes, depth=20):
        raise AssertionError("never built")

    with pytest.raises(TypeError, match="depth"):
        register_network("unannotated_test_net", plan=None, dataset_kind="cifar",
                         family="plain", description="")(builder)


# ---------------------------------------------------------------------------------------------
# Data, optimiser, schedule


def test_record_iter_normalises_and_pads_with_the_mean(tmp_path):
    rng = np.random.RandomState(1)
    images = [rng.randint(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(8)]
    make_records(tmp_path, "train", [0] * 8, pixels=lambda i: images[i])
    record = training.RecordFile(str(tmp_path / "train.rec"), str(tmp_path / "train.idx"), 8, 1)
    mean, std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 50.0, 40.0])
    batch = next(iter(training.record_iter(record, 8, (3, 32, 32), mean, std, {})))
    expected = (np.stack(images).transpose(0, 3, 1, 2) - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(batch.data[0].asnumpy(), expected, rtol=1e-5, atol=1e-5)

    # 4-pixel padding + random crop: padded pixels hold the mean grey, i.e. about 0.
    padded = np.concatenate([b.data[0].asnumpy() for b in training.record_iter(
        record, 8, (3, 32, 32), mean, std, dict(pad=4, rand_crop=True), shuffle=True, seed=5)])
    fill = (round(mean.mean()) - mean) / std
    is_fill = np.all(np.isclose(padded, fill[None, :, None, None], atol=1e-5), axis=1)
    assert is_fill.any()
    assert np.abs(fill).max() < 0.5


def test_workers_read_disjoint_equal_parts_of_the_data(tmp_path):
    # Image i carries i in its pixels, so the reader's output says which records it read.
    make_records(tmp_path, "train", [0] * 103, pixels=lambda i: np.full((32, 32, 3), i, np.uint8))
    record = training.RecordFile(str(tmp_path / "train.rec"), str(tmp_path / "train.idx"), 103, 1)
    parts = []
    for rank in range(2):
        reader = training.record_iter(record, 1, (3, 32, 32), (0, 0, 0), (1, 1, 1), {},
                                      shuffle=True, seed=2, num_parts=2, part_index=rank)
        parts.append([int(b.data[0].asnumpy()[0, 0, 0, 0]) for b in reader])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(103))
    # fit() runs (records // workers) // batch steps per epoch: both parts have that many.
    assert min(len(p) for p in parts) >= 103 // 2


def test_weight_decay_reaches_weights_biases_gammas_and_betas():
    names = ["conv_weight", "fc_bias", "bn_gamma", "bn_beta", "custom_scale"]
    optimizer = training.make_optimizer("nag", names, learning_rate=0.5, momentum=0.9, wd=0.1,
                                        rescale_grad=1.0)
    optimizer.idx2name = dict(enumerate(names))  # what Module.init_optimizer does
    for index, name in enumerate(names):
        weight = mx.nd.array([1.0, -2.0])
        state = optimizer.create_state(index, weight)
        optimizer.update(index, weight, mx.nd.zeros(2), state)
        # With a zero gradient, one Nesterov step moves w by -lr * (1 + momentum) * wd * w.
        decay = 0.0 if name == "custom_scale" else 0.5 * 1.9 * 0.1
        np.testing.assert_allclose(weight.asnumpy(), np.array([1.0, -2.0]) * (1 - decay),
                                   rtol=1e-6, err_msg=name)


def test_default_schedule_drops_lr_at_half_three_quarters_and_seven_eighths():
    assert training.default_lr_steps(400) == (200, 300, 350)
    scheduler = training.make_lr_scheduler(0.1, 0.1, 10, training.default_lr_steps(16))
    lrs = [training.lr_of_epoch(scheduler, 0.1, e, 10) for e in range(16)]
    expected = [0.1] * 8 + [0.01] * 4 + [0.001] * 2 + [0.0001] * 2
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)


def test_igcv3_schedule_multiplies_lr_by_098_every_epoch():
    scheduler = training.make_lr_scheduler(0.045, 0.98, 7, step_every=1)
    lrs = [training.lr_of_epoch(scheduler, 0.045, e, 7) for e in range(5)]
    np.testing.assert_allclose(lrs, [0.045 * 0.98 ** e for e in range(5)], rtol=1e-9)


def test_gpus_flag_defaults_to_available_gpus_and_empty_means_cpu():
    parser = train_model.build_parser()
    assert parser.parse_args([]).gpus == tuple(range(mx.context.num_gpus()))
    assert parser.parse_args(["--gpus", ""]).gpus == ()
    assert parser.parse_args(["--gpus", "0,2"]).gpus == (0, 2)
    assert training.contexts_for(()) == (mx.cpu(),)


# ---------------------------------------------------------------------------------------------
# ImageNet recipes: the authors' values reach the reader

# Written from the authors' scripts, independently of training/recipes.py:
# hellozting/InterleavedGroupConvolutions train_imagenet.py get_iterator (aug_type=1) and
# homles11/IGCV3 train_imagenet.py + common/data.py get_rec_iter (augmentation level 2).
AUTHORS_READERS = {
    "resnet_igc_imgnet_d18": dict(
        mean=(123.370, 112.757, 99.406), std=(68.998, 66.093, 68.292),
        train=dict(rand_crop=True, rand_mirror=True, min_random_scale=0.533,
                   max_random_scale=1.0, min_img_size=256, max_aspect_ratio=0.25, random_h=36,
                   random_s=50, random_l=50, inter_method=9, fill_value=112),
        val=dict(rand_crop=False, rand_mirror=False, min_random_scale=0.533,
                 max_random_scale=0.533, min_img_size=256, inter_method=9)),
    "igcv3": dict(
        mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0),
        train=dict(rand_crop=True, rand_mirror=True, min_random_scale=0.533,
                   max_random_scale=1.0, random_h=36, random_s=50, random_l=50,
                   fill_value=127),
        val=dict(rand_crop=False, rand_mirror=False, min_random_scale=0.533,
                 max_random_scale=0.534)),
}
READER_BOOKKEEPING = {"path_imgrec", "path_imgidx", "data_shape", "batch_size", "label_width",
                      "shuffle", "seed", "seed_aug", "num_parts", "part_index",
                      "preprocess_threads"}


def image_record_iter_parameters():
    """The keyword names MXNet's ImageRecordIter documents (it ignores any other silently)."""
    doc = mx.io.ImageRecordIter.__doc__
    doc = doc.decode() if isinstance(doc, bytes) else doc
    return set(re.findall(r"^(\w+) : ", doc, re.M))


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    data = tmp_path_factory.mktemp("imagenet")
    make_records(data, "train", [i % 10 for i in range(8)], size=(48, 64))
    make_records(data, "val", [i % 10 for i in range(4)], size=(48, 64))
    (data / "synsets.txt").write_text("".join(f"n{i:08d}\n" for i in range(10)))
    return str(data)


@pytest.mark.parametrize("name", sorted(AUTHORS_READERS))
def test_imagenet_readers_receive_the_authors_values(name, tiny_imagenet, tmp_path, monkeypatch,
                                                     ops):
    known = image_record_iter_parameters()
    assert {"random_h", "inter_method", "std_r", "fill_value"} <= known  # the parse works
    calls = []
    monkeypatch.setattr(mx.io, "ImageRecordIter", lambda **kw: calls.append(kw) or [])
    extra = ["--width-multiplier", "0.25"] if name == "igcv3" else []
    job, _ = train_imagenet.build_job(["--network", name, *extra, "--data-dir", tiny_imagenet,
                                       "--gpus", "", "--batch-size", "4", "--model-prefix",
                                       str(tmp_path / "m")])
    list(training.data.train_batches(job, 0, 1))
    training.data.val_iter(job)
    train, val = calls
    authors = AUTHORS_READERS[name]
    normalise = dict(zip(("mean_r", "mean_g", "mean_b"), authors["mean"]),
                     **dict(zip(("std_r", "std_g", "std_b"), authors["std"])))
    for kwargs, split in ((train, "train"), (val, "val")):
        assert set(kwargs) <= known, set(kwargs) - known
        reading = {k: v for k, v in kwargs.items() if k not in READER_BOOKKEEPING}
        fill = {} if split == "train" else {"fill_value": reading.get("fill_value")}
        assert reading == dict(authors[split], **normalise, **fill), split
        assert kwargs["data_shape"] == (3, 224, 224)
    # Scoring and prediction read validation images the same way.
    pre = recipes.validation_preprocessing(name, "imagenet")
    assert pre.augment == authors["val"]
    assert (pre.mean_rgb, pre.std_rgb) == (authors["mean"], authors["std"])


def test_igcv3_reader_subtracts_the_mean_and_divides_by_nothing(tmp_path):
    # The released IGCV3 weights expect mean-subtracted pixels: flat images come out as
    # pixel - mean exactly.
    values = [(10, 200, 90), (250, 0, 128)]
    make_records(tmp_path, "val", [0, 1], size=(256, 256),
                 pixels=lambda i: np.broadcast_to(np.array(values[i], np.uint8), (256, 256, 3)))
    record = training.RecordFile(str(tmp_path / "val.rec"), str(tmp_path / "val.idx"), 2, 2)
    pre = recipes.validation_preprocessing("igcv3", "imagenet")
    batch = next(iter(training.record_iter(record, 2, pre.data_shape, pre.mean_rgb, pre.std_rgb,
                                           pre.augment)))
    expected = np.array(values, np.float64) - np.array([123.68, 116.779, 103.939])
    np.testing.assert_allclose(batch.data[0].asnumpy().mean(axis=(2, 3)), expected, atol=1e-3)
    np.testing.assert_allclose(batch.data[0].asnumpy().std(axis=(2, 3)), 0, atol=1e-3)


def test_augment_flag_keeps_the_projects_other_augmentations_as_choices():
    actions = {a.dest: a for a in train_imagenet.build_parser()._actions}
    assert set(actions["augment"].choices) == {"igcv1", "igcv3", "resized-crop", "scale", "none"}
    known = image_record_iter_parameters()
    for kind in actions["augment"].choices:
        assert set(recipes.imagenet_augmentation(kind)) <= known, kind


def test_imagenet_schedules_are_the_authors(tiny_imagenet):
    parse = lambda name: training.parse_with_presets(  # noqa: E731
        train_imagenet.build_parser(), ["--network", name, "--gpus", ""], train_imagenet.presets)
    igcv1, igcv3 = parse("resnet_igc_imgnet_d18"), parse("igcv3")
    # IGCV1 train_imagenet.py defaults: 120 epochs, lr 0.1 x0.1 every 30, batch 256, Nesterov.
    assert (igcv1.num_epochs, igcv1.lr, igcv1.lr_factor, igcv1.lr_step_every, igcv1.batch_size,
            igcv1.optimizer, igcv1.momentum, igcv1.wd) == (120, 0.1, 0.1, 30, 256, "nag", 0.9,
                                                           1e-4)
    # IGCV3: 480 epochs, lr 0.045 x0.98 every epoch, wd 4e-5, 96 per device, SGD.
    assert (igcv3.num_epochs, igcv3.lr, igcv3.lr_factor, igcv3.lr_step_every, igcv3.batch_size,
            igcv3.optimizer, igcv3.wd) == (480, 0.045, 0.98, 1, 96, "sgd", 4e-5)
    assert (igcv1.augment, igcv3.augment) == ("igcv1", "igcv3")
