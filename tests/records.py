"""Small record sets and command lines shared by the training tests."""
import os
import subprocess

import mxnet as mx
import numpy as np

from training import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MEAN = recipes.CIFAR_DATASETS["demo"]["mean_rgb"]
DEMO_STD = recipes.CIFAR_DATASETS["demo"]["std_rgb"]
# Small and quick on a 2-core CPU; the stem has 8 channels.
SMALL_NET = ["--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
             "--secondary-partition", "2"]


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


def cpu_args(data_dir, prefix, *extra):
    return ["--dataset", "demo", "--data-dir", data_dir, "--gpus", "", "--model-prefix",
            str(prefix), "--rand-seed", "3", "--data-threads", "1", *SMALL_NET, *extra]


def read_params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}
