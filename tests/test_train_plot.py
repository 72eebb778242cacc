"""tools/plot_log.py: per-epoch lines parsed from a log written by hand, resumed epochs replaced,
several runs drawn on one figure."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "plot_log", os.path.join(ROOT, "tools", "plot_log.py")
)
plot_log = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_log)

LOG = """\
2024-01-01 00:00:00 configuration: {"network": "plain_igc"}
2024-01-01 00:00:10 Epoch[1] Batch[50/78] speed=300.0 img/s train-loss=2.2 train-acc=12.00%
2024-01-01 00:00:20 Epoch[1/3] train-loss=2.0000 train-acc=20.00% val-loss=1.9 val-acc=25.00% lr=0.1 speed=1.0 img/s time=10.0s eta=0:00:20
2024-01-01 00:00:30 Epoch[2/3] train-loss=1.5000 train-acc=40.00% val-loss=1.4 val-acc=45.00% lr=0.1 speed=1.0 img/s time=10.0s eta=0:00:10
2024-01-01 00:00:40 configuration: {"network": "plain_igc", "resume": true}
2024-01-01 00:00:41 --resume: continuing from m-0001.params
2024-01-01 00:00:50 Epoch[2/3] train-loss=1.4000 train-acc=50.00% val-loss=1.3 val-acc=55.00% lr=0.1 speed=1.0 img/s time=10.0s eta=0:00:10
2024-01-01 00:01:00 Epoch[3/3] train-loss=1.0000 train-acc=70.00% val-loss=0.9 val-acc=75.50% lr=0.01 speed=1.0 img/s time=10.0s eta=0:00:00
"""


def test_parse_log_keeps_the_latest_line_of_each_epoch(tmp_path):
    path = tmp_path / "m.log"
    path.write_text(LOG)
    records = plot_log.parse_log(str(path))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["val-acc"] for r in records] == [25.0, 55.0, 75.5]
    assert [r["lr"] for r in records] == [0.1, 0.1, 0.01]
    assert records[2]["train-loss"] == 1.0


def test_plot_log_prints_error_table_and_writes_one_figure_for_several_runs(tmp_path):
    for run in ("run_a", "run_b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "model.log").write_text(LOG)
    out = tmp_path / "figs" / "curves.png"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "plot_log.py"),
            str(tmp_path / "run_a" / "model.log"),
            str(tmp_path / "run_b" / "model.log"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "run_a" in proc.stdout and "run_b" in proc.stdout
    # Error = 100 - accuracy: epoch 3 has train 30.00 and val 24.50.
    assert any(line.split()[:3] == ["3", "30.00", "24.50"] for line in proc.stdout.splitlines())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary left


def test_plot_log_rejects_a_log_without_epoch_lines(tmp_path, capsys):
    path = tmp_path / "empty.log"
    path.write_text("nothing here\n")
    with pytest.raises(SystemExit) as exit_info:
        plot_log.main([str(path), "-o", str(tmp_path / "c.png")])
    assert exit_info.value.code == 2
    assert "no per-epoch lines" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def write_log(tmp_path):
    path = tmp_path / "model.log"
    path.write_text(LOG)
    return str(path)


def test_plot_log_into_a_folder_writes_curves_png_there(tmp_path, capsys):
    folder = tmp_path / "figures"
    folder.mkdir()
    assert plot_log.main([write_log(tmp_path), "-q", "-o", str(folder)]) == 0
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in folder.iterdir()] == ["curves.png"]
    assert f"wrote {folder / 'curves.png'}" in capsys.readouterr().out


@pytest.mark.parametrize("name,needle", [("curves", "no extension"),
                                         ("curves.xyz", "format '.xyz'")])
def test_plot_log_refuses_an_output_name_without_a_known_format(tmp_path, capsys, name, needle):
    with pytest.raises(SystemExit) as exit_info:
        plot_log.main([write_log(tmp_path), "-q", "-o", str(tmp_path / name)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and ".png" in err and ".pdf" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.log"]


def test_plot_log_refuses_an_unwritable_output_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        plot_log.main([write_log(tmp_path), "-q", "-o", str(blocker / "c.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"-o {blocker / 'c.png'}: cannot write there" in err, err
