"""Running loss and accuracy over batches, and how the log writes them."""
import numpy as np


class Stats:
    """Running cross-entropy loss and top-1 / top-k accuracy over a stream of batches."""

    def __init__(self, top_k=0, num_classes=None):
        self.top_k = top_k
        self.num_classes = num_classes  # also count a confusion matrix (rows: true labels)
        self.reset()

    def reset(self):
        self.count = 0
        self.loss = 0.0
        self.correct = 0
        self.correct_k = 0
        self.confusion = None if self.num_classes is None else \
            np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, probs, labels):
        """Add a batch; returns its mean loss (NaN/inf when the network diverged)."""
        labels = labels.astype(np.int64)
        picked = probs[np.arange(len(labels)), labels]
        losses = -np.log(np.maximum(picked, 1e-12))
        # A NaN probability must show up as a NaN loss, not be clipped away by maximum().
        losses[~np.isfinite(picked)] = np.nan
        batch_loss = float(losses.mean()) if np.isfinite(probs).all() else float("nan")
        self.count += len(labels)
        self.loss += float(losses.sum())
        self.correct += int((probs.argmax(axis=1) == labels).sum())
        if self.confusion is not None:
            np.add.at(self.confusion, (labels, probs.argmax(axis=1)), 1)
        if self.top_k:
            top = np.argpartition(-probs, self.top_k - 1, axis=1)[:, :self.top_k]
            self.correct_k += int((top == labels[:, None]).any(axis=1).sum())
        return batch_loss

    def values(self):
        n = max(self.count, 1)
        out = {"loss": self.loss / n, "acc": 100.0 * self.correct / n}
        if self.top_k:
            out[f"top{self.top_k}-acc"] = 100.0 * self.correct_k / n
        return out


def format_values(prefix, values):
    return " ".join(f"{prefix}-{k}={v:.4f}" if k == "loss" else f"{prefix}-{k}={v:.2f}%"
                    for k, v in values.items())


def per_class_table(confusion, names):
    """Lines 'class  images  correct  accuracy' from a confusion matrix (rows: true labels)."""
    width = max(len("class"), *map(len, names))
    lines = [f"{'class':{width}s} {'images':>7s} {'correct':>7s} {'accuracy':>8s}"]
    for name, row, correct in zip(names, confusion, np.diag(confusion)):
        accuracy = f"{100 * correct / row.sum():.2f}%" if row.sum() else "-"
        lines.append(f"{name:{width}s} {int(row.sum()):7d} {int(correct):7d} {accuracy:>8s}")
    return lines


def confusion_table(confusion, names):
    """Lines of the confusion matrix: a row per true class, a column per predicted class."""
    corner = "true/predicted"
    width = max(len(corner), *map(len, names))
    cell = max(4, len(str(len(names) - 1)), len(str(int(confusion.max()))))
    lines = [f"{corner:{width}s} " + " ".join(f"{i:>{cell}d}" for i in range(len(names)))]
    lines += [f"{name:{width}s} " + " ".join(f"{int(v):>{cell}d}" for v in row)
              for name, row in zip(names, confusion)]
    lines.append("columns: " + ", ".join(f"{i} {name}" for i, name in enumerate(names)))
    return lines
