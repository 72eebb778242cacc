"""Drills, as a careful and a careless user would run them: flipped bits in a checkpoint, two runs
on one prefix, --resume with another run's flags, edited PREFIX-model.json files, a data set that
does not fit the model, make_rec killed between its renames, special files given to -o, images
too large to decode, binary files where text is expected, absurd network sizes. Each ends in one
line naming the file, flag or array, and loses nothing."""
import json
import os
import pickletools
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import cv2
import numpy as np
import pytest

import train_model
from records import ROOT, cpu_args, make_demo, make_records, read_params

TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)
import export_onnx  # noqa: E402
import launch  # noqa: E402
import predict  # noqa: E402
import score  # noqa: E402

COMMON = ["--batch-size", "32", "--checkpoint-epochs", "1"]


def exits(main, argv, capsys, code=2):
    """The stderr of main(argv), which must exit with `code` after one line and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def run(small_demo_dir, tmp_path_factory, ops):
    """Two epochs with a checkpoint each, copied afresh by `copy_run` for every drill."""
    prefix = tmp_path_factory.mktemp("run") / "m"
    train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "2", *COMMON))
    return prefix


def copy_run(run, folder):
    for name in os.listdir(run.parent):
        if name.startswith("m-"):
            shutil.copy2(run.parent / name, folder / name)
    return folder / "m"


def flip_a_byte(path):
    """Flip one bit of a weight (the middle of a .params) or a momentum (the middle of the
    .states pickle's largest binary payload): the file still parses."""
    data = open(path, "rb").read()
    at = len(data) // 2
    if path.endswith(".states"):
        payloads = [(arg, pos) for _, arg, pos in pickletools.genops(data)
                    if isinstance(arg, bytes)]
        payload, pos = max(payloads, key=lambda p: len(p[0]))
        at = data.index(payload, pos) + len(payload) // 2
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0x40]))


# ---------------------------------------------------------------------------------------------
# Checkpoint integrity


@pytest.mark.parametrize("kind", ["params", "states"])
def test_a_flipped_bit_is_skipped_by_resume_and_refused_by_the_tools(small_demo_dir, run,
                                                                     tmp_path, capsys, kind):
    prefix = copy_run(run, tmp_path)
    damaged = f"{prefix}-0002.{kind}"
    flip_a_byte(damaged)
    err = exits(score.main, ["--model-prefix", str(prefix), "--gpus", ""], capsys)
    assert f"{damaged} does not match its SHA-256" in err, err
    history = train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "3", "--resume",
                                        *COMMON))
    assert [h["epoch"] for h in history] == [2, 3]
    log = open(f"{prefix}.log").read()
    assert f"skipping checkpoint: {damaged} does not match its SHA-256" in log
    assert f"continuing from {prefix}-0001.params" in log


def test_a_flipped_bit_in_a_pretrained_checkpoint_is_refused(small_demo_dir, run, tmp_path,
                                                             capsys):
    prefix = copy_run(run, tmp_path)
    flip_a_byte(f"{prefix}-0002.params")
    err = exits(train_model.main, cpu_args(small_demo_dir, tmp_path / "tuned", "--num-epochs",
                                           "1", "--pretrained", f"{prefix}-0002.params"), capsys)
    assert f"{prefix}-0002.params does not match its SHA-256" in err, err


def test_a_checkpoint_without_manifest_loads_with_a_warning(run, tmp_path, capsys):
    prefix = copy_run(run, tmp_path)
    os.remove(f"{prefix}-0002.manifest.json")
    values = score.main(["--model-prefix", str(prefix), "--gpus", ""])
    assert values["images"] == 100
    assert "m-0002.params has no manifest" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# One run per prefix


def test_a_second_run_on_a_prefix_stops_naming_the_first(small_demo_dir, tmp_path, capsys, ops):
    prefix = tmp_path / "m"
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_model.py"),
                              *cpu_args(small_demo_dir, prefix, "--num-epochs", "400",
                                        *COMMON)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while "training epochs" not in (open(f"{prefix}.log").read()
                                        if os.path.exists(f"{prefix}.log") else ""):
            assert first.poll() is None and time.time() < deadline, "first run did not start"
            time.sleep(0.2)
        err = exits(train_model.main, cpu_args(small_demo_dir, prefix, "--num-epochs", "1"),
                    capsys)
        assert f"is in use by another run (PID {first.pid} on " in err, err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # The kernel dropped the dead run's lock: the prefix is free again.
    history = train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "1"))
    assert [h["epoch"] for h in history] == [1]


# ---------------------------------------------------------------------------------------------
# Resume is the same run


def test_resume_with_another_seed_or_data_is_refused_unless_allowed(small_demo_dir, run,
                                                                    tmp_path, capsys):
    prefix = copy_run(run, tmp_path)
    resume = ["--num-epochs", "3", "--resume", *COMMON]
    err = exits(train_model.main, cpu_args(small_demo_dir, prefix, *resume, "--rand-seed", "9"),
                capsys)
    assert f"is not the run of {prefix}-0002.params" in err and "seed: 3 -> 9" in err, err
    other = tmp_path / "other"
    labels = np.arange(320) % 10
    make_records(other, "train", labels, seed=5)
    make_records(other, "test", labels[:100], seed=6)
    err = exits(train_model.main, cpu_args(str(other), prefix, *resume), capsys)
    assert "train_data.idx_sha256" in err and "val_data.labels_sha256" in err, err
    # A copy of the same records elsewhere is the same data.
    copy = tmp_path / "copy"
    shutil.copytree(small_demo_dir, copy)
    history = train_model.main(cpu_args(str(copy), prefix, *resume, "--allow-changes",
                                        "--rand-seed", "9"))
    assert [h["epoch"] for h in history] == [3]
    log = open(f"{prefix}.log").read()
    assert f"--allow-changes: continuing {prefix}-0002.params with: seed: 3 -> 9" in log


def test_resume_without_a_seed_keeps_the_runs_seed(small_demo_dir, run, tmp_path):
    straight = copy_run(run, tmp_path)
    train_model.main(cpu_args(small_demo_dir, straight, "--num-epochs", "3", "--resume",
                              *COMMON))
    argv = cpu_args(small_demo_dir, tmp_path / "unseeded" / "m", "--num-epochs", "3", "--resume",
                    *COMMON)
    os.makedirs(tmp_path / "unseeded")
    resumed = copy_run(run, tmp_path / "unseeded")
    seed_at = argv.index("--rand-seed")
    train_model.main(argv[:seed_at] + argv[seed_at + 2:])
    a, b = read_params(f"{straight}-0003.params"), read_params(f"{resumed}-0003.params")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_resume_with_another_partition_names_the_flag_or_the_array(small_demo_dir, run,
                                                                   tmp_path, capsys):
    prefix = copy_run(run, tmp_path)
    argv = cpu_args(small_demo_dir, prefix, "--num-epochs", "3", "--resume", *COMMON,
                    "--primary-partition", "2")
    err = exits(train_model.main, argv, capsys)
    assert "config.primary_partition: 4 -> 2" in err, err
    err = exits(train_model.main, argv + ["--allow-changes"], capsys)
    assert "the checkpoint does not fit network plain_igc" in err and \
        "of another shape (" in err and "file (" in err, err


# ---------------------------------------------------------------------------------------------
# PREFIX-model.json and the data set a tool is given


@pytest.mark.parametrize("edit,key", [
    (lambda info: info["val_augment"].update(path_imgrec="/elsewhere/train.rec"),
     "val_augment.path_imgrec"),
    (lambda info: info.update(std_rgb=[0, 0, 0]), "'std_rgb'"),
    (lambda info: info.update(note="x"), "unknown key 'note'"),
    (lambda info: info.update(data_shape=[3, 64, 64]), "'data_shape'"),
    (lambda info: info.update(num_classes="ten"), "'num_classes'"),
    (lambda info: info.update(mean_rgb=[float("nan")] * 3), "'mean_rgb'"),
    (lambda info: info.pop("dataset"), "'dataset' is missing"),
    (lambda info: info["config"].update(depth="deep"), "'config.depth'"),
], ids=["record_file", "std_zero", "unknown_key", "data_shape", "classes_text", "nan_mean",
        "missing_key", "config_value"])
def test_an_edited_model_description_is_one_line_naming_file_and_key(run, tmp_path, capsys,
                                                                      edit, key):
    prefix = copy_run(run, tmp_path)
    path = f"{prefix}-model.json"
    info = json.load(open(path))
    edit(info)
    with open(path, "w") as f:
        json.dump(info, f)
    err = exits(score.main, ["--model-prefix", str(prefix), "--gpus", ""], capsys)
    assert path in err and key in err, err


def test_scoring_a_data_set_with_another_class_count_or_image_size_is_refused(run, tmp_path,
                                                                              capsys):
    two = tmp_path / "two"
    make_records(two, "test", np.arange(40) % 2)
    (two / "synsets.txt").write_text("cat\ndog\n")
    err = exits(score.main, ["--model-prefix", str(run), "--gpus", "", "--data-dir", str(two)],
                capsys)
    assert "the data set has 2 classes" in err and "the model has 10" in err, err
    large = tmp_path / "large"
    make_records(large, "test", np.arange(40) % 10, size=(64, 64))
    err = exits(score.main, ["--model-prefix", str(run), "--gpus", "", "--data-dir",
                             str(large)], capsys)
    assert "images of 64x64 pixels" in err and "takes 32x32" in err, err


# ---------------------------------------------------------------------------------------------
# make_rec and the stale folder

KILLED_MAKE_REC = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from tools import make_rec
    from tools.recordio import writer

    real_replace, done = os.replace, []

    def replace_then_die(src, dst):
        # Killed after the first split's files are in place, before the rest.
        real_replace(src, dst)
        done.append(dst)
        if len(done) == 4:
            os._exit(9)

    writer.os.replace = replace_then_die
    make_rec.main(["demo", "--out", {out!r}, "--num-train", "200", "--num-test", "64",
                   "--seed", "7", "--force"])
""")


def test_make_rec_killed_between_its_renames_is_refused_by_training(tmp_path, capsys, ops):
    data = make_demo(tmp_path / "demo", 320, 100)
    driver = tmp_path / "driver.py"
    driver.write_text(KILLED_MAKE_REC.format(root=ROOT, out=data))
    assert subprocess.run([sys.executable, str(driver)], capture_output=True,
                          timeout=120).returncode == 9
    err = exits(train_model.main, cpu_args(data, tmp_path / "m", "--num-epochs", "1"), capsys)
    assert "make_rec.sh was stopped while it replaced the records" in err, err
    # The next build replaces the mixture.
    make_demo(data, 320, 100)
    assert not os.path.exists(os.path.join(data, ".make_rec.switching"))
    built = json.load(open(os.path.join(data, "make_rec.json")))
    assert built["files"]["train.rec"]["size"] == os.path.getsize(os.path.join(data,
                                                                               "train.rec"))


def test_the_stale_folder_still_scores_by_prefix(small_demo_dir, run, tmp_path, capsys):
    prefix = copy_run(run, tmp_path)
    train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "1", "--rand-seed", "9",
                              "--primary-partition", "2", *COMMON))
    (stale,) = [p for p in os.listdir(tmp_path) if p.startswith("m.stale-")]
    values = score.main(["--model-prefix", str(tmp_path / stale / "m"), "--gpus", ""])
    out = capsys.readouterr().out
    assert values["images"] == 100 and f"{tmp_path / stale / 'm'}-0002.params" in out, out


# ---------------------------------------------------------------------------------------------
# -o


def test_export_never_replaces_a_special_file_and_writes_through_a_link(tmp_path, capsys, ops):
    small = ["--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
             "--secondary-partition", "2"]
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    err = exits(export_onnx.main, [*small, "-o", str(fifo)], capsys)
    assert f"-o {fifo}: is a FIFO" in err, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    target, link = tmp_path / "target.onnx", tmp_path / "link.onnx"
    target.write_bytes(b"old")
    link.symlink_to(target)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".target.onnx.tmp{dead.pid}"
    leftover.write_bytes(b"partial")
    export_onnx.main([*small, "-o", str(link)])
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert target.read_bytes()[:4] != b"old" and target.stat().st_size > 1000
    assert not leftover.exists()


# ---------------------------------------------------------------------------------------------
# Images, text files, sizes, names


def png_header_only(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                             0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def test_predict_skips_a_huge_image_and_names_a_corrupt_jpeg(run, tmp_path, capsys):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(50000, 50000))
    rgb = (np.random.RandomState(0).rand(48, 48, 3) * 255).astype(np.uint8)
    good, corrupt = tmp_path / "good.png", tmp_path / "corrupt.jpg"
    cv2.imwrite(str(good), rgb)
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    corrupt.write_bytes(jpeg[:len(jpeg) // 2] + b"\xff\xd9")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model-prefix", str(run), str(good), str(huge), str(corrupt)])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == [str(good),
                                                                           str(corrupt)]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in captured.err, captured.err
    assert f": error: {huge}: 50000x50000 pixels" in errors[0], errors
    assert f": warning: {corrupt}: Corrupt JPEG data" in errors[1], errors


def test_binary_files_given_for_text_are_one_line(run, tmp_path, capsys):
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    err = exits(score.main, ["--model-prefix", str(run), "--gpus", "", "--symbol", str(binary)],
                capsys)
    assert f"--symbol {binary}: not a JSON graph" in err, err
    with pytest.raises(SystemExit) as exit_info:
        launch.read_hosts(str(binary))
    assert str(exit_info.value) == f"launch.py: error: -H {binary}: not a text file of host names"


def limited_memory():
    # A refusal must come from the check, not from the machine running out of memory.
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


@pytest.mark.parametrize("argv,message", [
    ([os.path.join(TOOLS, "export_onnx.py"), "--network", "igcv3", "--width-multiplier", "50",
      "-o", "x.onnx"], "network igcv3 --width-multiplier 50.0: "),
    (["train_model.py", "--network", "plain_igc", "--depth", "200000", "--gpus", ""],
     "network plain_igc --depth 200000: 199999 blocks"),
], ids=["export_width", "train_depth"])
def test_absurd_network_sizes_are_one_line_naming_the_flag(argv, message, tmp_path, ops):
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=90,
                          cwd=ROOT if argv[0] == "train_model.py" else tmp_path,
                          preexec_fn=limited_memory)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_network_summary_without_a_name_lists_the_names():
    proc = subprocess.run([sys.executable, "-m", "network"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "unknown network None" not in proc.stderr
    assert "give a network name or --list; names: igcv2, " in proc.stderr, proc.stderr


def test_make_rec_names_the_corrupt_jpeg_it_packs(tmp_path, capsys):
    from test_data import write_imagenet_tree

    from tools import make_rec

    root = tmp_path / "ilsvrc"
    write_imagenet_tree(root, np.random.default_rng(3))
    cut = root / "train" / "n01443537" / "n01443537_0.JPEG"
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    code = make_rec.main(["imagenet", "--from", str(root), "--out", str(tmp_path / "out"),
                          "--workers", "1", "--resize", "64"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"warning: {cut}: Corrupt JPEG data" in err, err
