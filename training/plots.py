"""PNG figures of a run: training curves and confusion matrices (matplotlib, no display needed)."""

from __future__ import annotations

import os
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SKIPPED_KEYS = ("epoch", "step", "seconds", "images_per_second", "learning_rate")


def curve_names(history: list[dict]) -> list[str]:
    """Metric names to plot (each with its `val_` twin when present), loss first."""
    names: list[str] = []
    for row in history:
        for key in row:
            base = key[4:] if key.startswith("val_") else key
            if base not in SKIPPED_KEYS and base not in names:
                names.append(base)
    return sorted(names, key=lambda n: (n != "loss", n))


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> pathlib.Path:
    """One panel per metric (train and validation per epoch) plus the learning rate; writes `path`."""
    names = curve_names(history)
    has_lr = any("learning_rate" in row for row in history)
    panels = len(names) + int(has_lr)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(4.2 * max(1, panels), 3.4), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, name in zip(axes[0], names):
        for key, style in ((name, "-o"), (f"val_{name}", "--s")):
            points = [(e, row[key]) for e, row in zip(epochs, history) if row.get(key) is not None]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label="validation" if key.startswith("val_") else "train")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    if has_lr:
        ax = axes[0][len(names)]
        ax.plot(epochs, [row.get("learning_rate") for row in history], "-o", markersize=3)
        ax.set_title("learning rate (end of epoch)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | os.PathLike,
                   title: str = "") -> pathlib.Path:
    """Row-normalised confusion matrix (true class per row); class names on the axes up to 60 classes."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(class_names)
    side = min(24.0, max(5.0, 0.28 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 60:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
