"""tools/launch.py: a loopback parameter-server cluster trains with dist_sync to identical
weights; a failing or hanging worker makes the launcher exit non-zero within its timeout."""
import hashlib
import os
import re
import subprocess
import sys
import time

import mxnet as mx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, os.path.join(ROOT, "tools", "launch.py")]


def launch(args, timeout):
    started = time.time()
    proc = subprocess.run(LAUNCH + args, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    return proc, time.time() - started


def test_dist_sync_two_workers_end_with_identical_weights(tmp_path, ops):
    data = tmp_path / "demo"
    subprocess.run([os.path.join(ROOT, "tools", "make_rec.sh"), "demo", "--out", str(data),
                    "--num-train", "256", "--num-test", "64"],
                   check=True, capture_output=True, timeout=120)
    prefix = tmp_path / "run" / "m"
    train = [sys.executable, "train_model.py", "--dataset", "demo", "--data-dir", str(data),
             "--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
             "--secondary-partition", "2", "--gpus", "", "--num-epochs", "1", "--batch-size",
             "16", "--model-prefix", str(prefix), "--rand-seed", "1", "--kv-store", "dist_sync",
             "--data-threads", "1"]
    proc, _ = launch(["-n", "2", "-s", "1", "--timeout", "150", "--", *train], timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = dict(re.findall(r"\[(worker \d)\] .*weights digest ([0-9a-f]{40})", proc.stdout))
    assert set(digests) == {"worker 0", "worker 1"}, proc.stdout[-3000:]
    assert digests["worker 0"] == digests["worker 1"]
    # Each worker did 256 / 2 / 16 = 8 updates on its half of the data.
    assert len(re.findall(r"8 batches of 16 per epoch on each of 2 workers", proc.stdout)) == 2
    # The digests are of the weights rank 0 saved: hash the checkpoint independently.
    saved = mx.nd.load(f"{prefix}-0001.params")
    digest = hashlib.sha1()
    for key in sorted(k for k in saved if k.startswith("arg:")):
        digest.update(key[4:].encode())
        digest.update(saved[key].asnumpy().tobytes())
    assert digest.hexdigest() == digests["worker 0"]


def test_failing_worker_makes_launch_exit_nonzero():
    proc, elapsed = launch(["-n", "2", "-s", "1", "--timeout", "60", "--", sys.executable, "-c",
                            "import sys; sys.exit(3)"], timeout=90)
    assert proc.returncode != 0
    assert "exited with status 3" in proc.stderr
    assert elapsed < 60


def test_hanging_worker_is_stopped_at_the_timeout():
    proc, elapsed = launch(["-n", "1", "-s", "1", "--timeout", "3", "--", sys.executable, "-c",
                            "import time; time.sleep(600)"], timeout=60)
    assert proc.returncode == 124
    assert "timed out after 3 s" in proc.stderr
    assert elapsed < 30


def test_local_cluster_uses_only_the_loopback_address():
    proc, _ = launch(["-n", "2", "-s", "1", "--dry-run", "--", "train"], timeout=30)
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["scheduler", "server 0", "worker 0",
                                                      "worker 1"]
    for line in lines:
        assert "DMLC_PS_ROOT_URI=127.0.0.1" in line and "DMLC_NODE_HOST=127.0.0.1" in line
        assert "DMLC_NUM_WORKER=2" in line and "DMLC_NUM_SERVER=1" in line


def test_hostfile_places_servers_and_workers_over_ssh(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# cluster\nnode-a\nnode-b  # second\n")
    proc, _ = launch(["-n", "2", "-s", "2", "-H", str(hosts), "--scheduler-host", "10.0.0.1",
                      "--port", "9999", "--dry-run", "--", "python", "train_model.py", "--kv-store",
                      "dist_sync"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    assert lines.keys() == {"scheduler (here)", "server 0 (node-a)", "server 1 (node-b)",
                            "worker 0 (node-a)", "worker 1 (node-b)"}
    for label, line in lines.items():
        assert "DMLC_PS_ROOT_URI=10.0.0.1" in line and "DMLC_PS_ROOT_PORT=9999" in line
        if label != "scheduler (here)":
            host = label.split("(")[1].rstrip(")")
            assert f"ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new {host} " in line
            assert f"DMLC_NODE_HOST={host}" in line
    assert "train_model.py" in lines["worker 1 (node-b)"]


def test_training_with_a_non_dist_kv_store_is_refused_before_anything_starts(tmp_path):
    marker = tmp_path / "started"
    for kv in (["--kv-store", "device"], ["--kv-store=local"], []):
        # The "training" would leave a marker: nothing may start.
        command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')", "train_model.py", *kv]
        proc, _ = launch(["-n", "2", "-s", "1", "--timeout", "30", "--", *command], timeout=60)
        assert proc.returncode == 2, (kv, proc.stderr)
        assert "each worker would train on its own" in proc.stderr, proc.stderr
        assert "--kv-store dist_sync" in proc.stderr
        assert not marker.exists()
    proc, _ = launch(["--dry-run", "-n", "1", "-s", "1", "--", sys.executable, "train_model.py",
                      "--kv-store", "dist_sync"], timeout=60)
    assert proc.returncode == 0, proc.stderr
