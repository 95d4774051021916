"""Classification metrics over plain arrays: top-k accuracy, per-class precision and recall, the
confusion matrix (JSON, CSV, PNG) and the most-confused pairs; what `-mode evaluate` and the batch
job report."""

from __future__ import annotations

import csv
import io

import numpy as np

MOST_CONFUSED = 10


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] int64 counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def per_class(matrix: np.ndarray, class_names: list[str]) -> list[dict]:
    """Support, predictions, precision and recall of each class (None where undefined: 0/0)."""
    support, predicted, hits = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    rows = []
    for k, name in enumerate(class_names):
        rows.append({"class": name, "support": int(support[k]), "predicted": int(predicted[k]),
                     "precision": float(hits[k] / predicted[k]) if predicted[k] else None,
                     "recall": float(hits[k] / support[k]) if support[k] else None})
    return rows


def most_confused(matrix: np.ndarray, class_names: list[str], top: int = MOST_CONFUSED) -> list[dict]:
    """The largest off-diagonal cells: true class, predicted class, count, fraction of the true class."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = []
    for flat in order:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] == 0:
            break
        pairs.append({"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j]),
                      "fraction": float(off[i, j] / matrix[i].sum())})
    return pairs


def top_k_accuracy(labels: np.ndarray, top_indices: np.ndarray, k: int) -> float:
    """Share of items whose label is among the first k of their ranked predictions."""
    return float(np.mean(np.any(top_indices[:, :k] == np.asarray(labels)[:, None], axis=1)))


def classification_report(labels: np.ndarray, top_indices: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy (with chance), per-class figures, confusion matrix and most-confused pairs of
    labelled items; labels and top_indices index `class_names`."""
    num_classes = len(class_names)
    top = top_indices.shape[1]
    matrix = confusion_matrix(labels, top_indices[:, 0], num_classes)
    return {
        "evaluated": int(len(labels)),
        "top1": top_k_accuracy(labels, top_indices, 1),
        f"top{top}": top_k_accuracy(labels, top_indices, top),
        "chance": {"top1": 1.0 / num_classes, f"top{top}": top / num_classes},
        "per_class": per_class(matrix, class_names),
        "most_confused": most_confused(matrix, class_names),
        "confusion_matrix": {"classes": list(class_names), "rows": "true class", "columns": "predicted class",
                             "matrix": matrix.tolist()},
    }


def confusion_csv(matrix: np.ndarray, class_names: list[str]) -> str:
    """The matrix as CSV: a header of predicted classes, one row per true class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, matrix.tolist()):
        writer.writerow([name, *row])
    return buffer.getvalue()


def confusion_png(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """The matrix as a PNG heat map, rows normalised to the share of each true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.35 * k, 40)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    labelled = k <= 60
    ax.set_xticks(range(k) if labelled else [])
    ax.set_yticks(range(k) if labelled else [])
    if labelled:
        ax.set_xticklabels(class_names, rotation=90, fontsize=8)
        ax.set_yticklabels(class_names, fontsize=8)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if matrix[i, j]:
                        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
