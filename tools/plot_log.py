"""Plot train/val error against epoch from training logs, several runs on one figure.

    tools/plot_log.py runs/cifar10/*/model.log -o curves.png

Reads the per-epoch lines that train_model.py / train_imagenet.py write
(`Epoch[E/N] train-loss=... train-acc=...% val-acc=...% ...`), prints each run's per-epoch table
and draws train error (dashed) and validation error (solid) per run, as the IGC papers plot them.
A resumed run appends to its log; when an epoch shows up again, the later lines win.
"""
import argparse
import os
import re
import sys
import warnings

EPOCH_LINE = re.compile(r"Epoch\[(\d+)/(\d+)\] (.*)$")
FIELD = re.compile(r"([\w-]+)=([-+\d.eE]+|nan|inf)(%?)")


def parse_log(path):
    """[{'epoch': int, 'train-acc': float, 'val-acc': ..., 'lr': ..., ...}] in epoch order."""
    records = []
    with open(path, errors="replace") as f:
        for line in f:
            match = EPOCH_LINE.search(line)
            if not match:
                continue
            record = {"epoch": int(match.group(1))}
            record.update((k, float(v)) for k, v, _ in FIELD.findall(match.group(3)))
            # A restart or resume from an earlier checkpoint rewrites the epochs from there on.
            records = [r for r in records if r["epoch"] < record["epoch"]]
            records.append(record)
    return records


def run_label(path, paths):
    """The log's directory name when that tells the runs apart, else the file name."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    parents = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    return parent if parents.count(parent) == 1 else os.path.basename(path)


def error_columns(records):
    """(column title, key) for every accuracy the log has, shown as error = 100 - accuracy."""
    keys = [k for k in ("train-acc", "val-acc", "train-top5-acc", "val-top5-acc")
            if any(k in r for r in records)]
    return [(k.replace("-acc", "-err"), k) for k in keys]


def table(records):
    columns = error_columns(records)
    head = ["epoch"] + [title + " %" for title, _ in columns] + ["lr", "time s"]
    rows = [head]
    for r in records:
        rows.append([str(r["epoch"])]
                    + [f"{100.0 - r[k]:.2f}" if k in r else "-" for _, k in columns]
                    + [f"{r['lr']:g}" if "lr" in r else "-",
                       f"{r['time']:.1f}" if "time" in r else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


DEFAULT_FIGURE = "curves.png"


def figure_formats():
    """The file extensions matplotlib can write (png, pdf, svg, ...)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase
    return sorted(FigureCanvasBase.get_supported_filetypes())


def output_path(out):
    """Where -o OUT writes: OUT itself, or OUT/curves.png for a folder; ValueError (naming the
    problem) for an unknown format or a place that cannot be written."""
    if os.path.isdir(out) or out.endswith(os.sep):
        out = os.path.join(out, DEFAULT_FIGURE)
    ext = os.path.splitext(out)[1].lstrip(".").lower()
    formats = figure_formats()
    if ext not in formats:
        what = f"format '.{ext}'" if ext else "no extension"
        raise ValueError(f"-o {out}: {what}; give a file name ending in one of "
                         f"{', '.join('.' + f for f in formats)}, or a folder")
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK) or \
            (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise ValueError(f"-o {out}: cannot write there ({folder} is not a writable folder)")
    return out


def plot(runs, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, records) in enumerate(runs):
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in records]
        for key, style, kind in (("train-acc", "--", "train"), ("val-acc", "-", "val")):
            if any(key in r for r in records):
                ax.plot([e for e, r in zip(epochs, records) if key in r],
                        [100.0 - r[key] for r in records if key in r],
                        style, color=colour, marker="o", markersize=3, label=f"{label} {kind}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 error (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    directory, base = os.path.split(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    root, ext = os.path.splitext(base)
    # Written under a temporary name (same format) and renamed: never a half-written image.
    tmp = os.path.join(directory, f".{root}.tmp{os.getpid()}{ext}")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    # matplotlib 3.8 calls pyparsing's camelCase names, which pyparsing >= 3.3 deprecates with a
    # UserWarning per call: noise about a library, not about the user's logs.
    warnings.filterwarnings("ignore", message=r"'\w+' deprecated - use '\w+'",
                            category=DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", metavar="LOG", help="training log file(s)")
    parser.add_argument("-o", "--output", help="write the figure to this file (its extension "
                        "picks the format: .png, .pdf, .svg, ...) or into this folder as "
                        f"{DEFAULT_FIGURE}")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the tables")
    args = parser.parse_args(argv)
    try:
        output = output_path(args.output) if args.output else None
    except ValueError as err:
        parser.error(str(err))
    runs = []
    for path in args.logs:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
        records = parse_log(path)
        if not records:
            parser.error(f"{path}: no per-epoch lines (Epoch[E/N] ...) found")
        runs.append((run_label(path, args.logs), records))
    if not args.quiet:
        for label, records in runs:
            print(f"{label}\n{table(records)}\n")
    if output:
        try:
            plot(runs, output)
        except OSError as err:
            parser.exit(1, f"{parser.prog}: error: -o {output}: {err.strerror or err}\n")
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
