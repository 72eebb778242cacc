"""Resume, --load-epoch and checkpoint safety: a killed or diverging run, a full disk, unwritable
or stale prefixes, truncated files and leftover temporaries, each against an uninterrupted run
or the files on disk."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import train_model
from records import (
    ROOT,
    cpu_args,
    read_params,
)

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
                                        "--rand-seed", "9", *common))
    assert [h["epoch"] for h in resumed] == [2]
    (stale,) = [p for p in os.listdir(tmp_path) if p.startswith("m.stale-")]
    # Every file of the older run, its graph and model description included.
    assert sorted(os.listdir(tmp_path / stale)) == sorted(
        [f"m-000{e}.{kind}" for e in (1, 2, 3) for kind in ("params", "states", "manifest.json")]
        + ["m-model.json", "m-symbol.json"])
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
