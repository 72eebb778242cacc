"""Running loss and accuracy over batches, and how the log writes them."""
import numpy as np


class Stats:
    """Running cross-entropy loss and top-1 / top-k accuracy over a stream of batches."""

    def __init__(self, top_k=0):
        self.top_k = top_k
        self.reset()

    def reset(self):
        self.count = 0
        self.loss = 0.0
        self.correct = 0
        self.correct_k = 0

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
