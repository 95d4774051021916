"""Retrieval plots (matplotlib, Agg): feature scatters, the precision-recall curve, result grids."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retrieval.ranking import hamming_distances  # noqa: E402

_CORRECT, _WRONG = "#1a9850", "#d73027"


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most `max_points` items, drawn uniformly without replacement (seeded)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def _as_real(features: np.ndarray) -> np.ndarray:
    """Packed bit codes become +-1 values, so codes can be projected like real features."""
    if features.dtype == np.uint8:
        return np.unpackbits(features, axis=1).astype(np.float32) * 2 - 1
    return features.astype(np.float32)


def project(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates: 'pca' (sklearn PCA) or 'tsne' (sklearn t-SNE on the first 50 PCA axes)."""
    from sklearn.decomposition import PCA

    x = _as_real(features)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        if x.shape[1] > 50 and len(x) > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    raise ValueError(f"Invalid value for argument `method`. Received: {method!r}. Expected 'pca' or 'tsne'.")


LEGEND_CLASSES = 20  # up to this many classes get a legend (tab20 colours); more get names at their centroids


def draw_embedding(ax, xy: np.ndarray, labels: np.ndarray, class_names=None) -> str:
    """Scatter `xy` coloured by class on `ax` and name the classes; returns how they are named.

    Up to LEGEND_CLASSES classes: distinct tab20 colours and a legend. More: colours repeat, so each
    class name is written at its centroid (the mean of its projected points) instead of a legend.
    """
    classes = np.unique(labels)
    legend = len(classes) <= LEGEND_CLASSES
    cmap = plt.get_cmap("tab20" if legend else "nipy_spectral")
    palette = cmap(np.linspace(0, 1, max(len(classes), 2)))
    ax.scatter(xy[:, 0], xy[:, 1], c=palette[np.searchsorted(classes, labels)], s=10, alpha=0.8, linewidths=0)

    def name(c):
        return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)

    if legend:
        for i, c in enumerate(classes):
            ax.scatter([], [], color=palette[i], label=name(c), s=20)
        ax.legend(fontsize=7, loc="best", markerscale=1.0, ncol=2 if len(classes) > 10 else 1)
        return "legend"
    for c in classes:
        cx, cy = xy[labels == c].mean(axis=0)
        ax.text(cx, cy, name(c), fontsize=6, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", alpha=0.7, linewidth=0))
    return "class names at their centroids"


def plot_embedding(features, labels, out_path, *, method: str = "tsne", class_names=None,
                   max_points: int = 2000, seed: int = 0, title: str | None = None) -> str:
    """Scatter of the features projected to 2-D, coloured by class (see draw_embedding for the
    naming: a legend up to LEGEND_CLASSES classes, names at the centroids beyond); returns the file."""
    labels = np.asarray(labels)
    keep = _subsample(len(labels), max_points, seed)
    xy = project(np.asarray(features)[keep], method, seed)
    lab = labels[keep]
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    naming = draw_embedding(ax, xy, lab, class_names)
    ax.set_title(title or f"{method.upper()} of {len(keep)} items ({len(np.unique(lab))} classes, {naming})")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return str(out_path)


def plot_pr_curve(report: dict, out_path) -> str:
    """Mean precision against mean recall after each rank cut-off (report['pr_curve'])."""
    curve = report["pr_curve"]
    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    ax.plot(curve["recall"], curve["precision"], marker=".", markersize=3)
    ax.set_xlabel("recall (mean over queries)")
    ax.set_ylabel("precision (mean over queries)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    mean_ap = report.get("map")
    ax.set_title(f"{report['metric']} distance, mAP = {mean_ap:.4f}" if mean_ap is not None else "no query evaluated")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return str(out_path)


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int, metric: str = "l2",
            exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest gallery items of a few queries (tie rule: lower gallery index first).

    `exclude[i]` is a gallery index left out for query i (leave-one-out), or -1.
    """
    if metric == "hamming":
        d = hamming_distances(queries, gallery).astype(np.float64)
    else:
        q = queries.astype(np.float64)
        g = gallery.astype(np.float64)
        if metric == "cosine":
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            g = g / np.linalg.norm(g, axis=1, keepdims=True)
            d = 1.0 - q @ g.T
        else:
            d = np.sqrt(np.maximum((q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * q @ g.T, 0))
    if exclude is not None:
        rows = np.flatnonzero(np.asarray(exclude) >= 0)
        d[rows, np.asarray(exclude)[rows]] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def _tile(ax, image, caption: str, colour: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image is not None:
        img = np.asarray(image)
        ax.imshow(img if img.ndim == 3 and img.shape[2] == 3 else img.squeeze(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.set_facecolor("#f4f4f4")
        ax.text(0.5, 0.5, caption, ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes)
    if colour:
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
    ax.set_title(caption if image is not None else "", fontsize=6)


def plot_result_grid(rows: list[dict], out_path, *, title: str = "") -> str:
    """A grid: one row per query, the query tile then its results.

    Each row is {'query': {'image': array|None, 'caption': str}, 'results': [{'image', 'caption',
    'correct': bool|None}, ...]}; results are framed green when correct, red when not.
    """
    cols = 1 + max((len(r["results"]) for r in rows), default=0)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.45 * cols, 1.6 * len(rows) + 0.4), dpi=110,
                             squeeze=False)
    for i, row in enumerate(rows):
        _tile(axes[i, 0], row["query"].get("image"), row["query"]["caption"], "#333333")
        for j in range(1, cols):
            if j - 1 < len(row["results"]):
                res = row["results"][j - 1]
                colour = None if res.get("correct") is None else (_CORRECT if res["correct"] else _WRONG)
                _tile(axes[i, j], res.get("image"), res["caption"], colour)
            else:
                axes[i, j].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return str(out_path)


def missing_images_note(query_set, gallery_set=None, fetched: bool = False) -> str | None:
    """None when the example grid has drawings to show; else why its tiles hold only class and id
    (the feature files have no `images`: the trainer's features_<split>.npz, for one, stores none)."""
    if fetched:
        return None
    missing = [fs.path or "features" for fs in (query_set, gallery_set) if fs is not None and fs.images is None]
    if not missing:
        return None
    return (f"no drawings to show: {', '.join(map(str, missing))} "
            f"{'has' if len(missing) == 1 else 'have'} no `images`; tiles give the class and id only "
            "(--data_path DIR draws them from the data set's records)")


def plot_example_queries(query_set, gallery_set, out_path, *, metric: str = "l2", examples: int = 8,
                         k: int = 8, seed: int = 0, fetch_images=None) -> str:
    """Example queries (one per class where possible, seeded) and their k nearest gallery items.

    `query_set`/`gallery_set` are FeatureSets (gallery_set None: leave-one-out on query_set);
    tiles show the thumbnails in `images` when the file has them, else those `fetch_images(ids) ->
    {id: image}` finds by the items' ids (the data set's records), else the class and id, and the
    grid's title then says so (missing_images_note).
    """
    gallery = query_set if gallery_set is None else gallery_set
    rng = np.random.default_rng(seed)
    labels = query_set.labels
    first_of_class = {}
    for i in rng.permutation(len(labels)):
        first_of_class.setdefault(int(labels[i]), int(i))
    picks = np.array(sorted(first_of_class.values())[: examples] if len(first_of_class) >= examples else
                     rng.choice(len(labels), size=min(examples, len(labels)), replace=False))
    k = min(k, len(gallery) - (1 if gallery_set is None else 0))
    exclude = picks if gallery_set is None else None
    idx, dist = nearest(query_set.features[picks], gallery.features, k, metric, exclude)
    shown = [(query_set, int(q)) for q in picks] + [(gallery, int(j)) for j in idx.ravel()]
    wanted = [str(fs.ids[i]) for fs, i in shown if fs.images is None and fs.ids is not None]
    found = fetch_images(sorted(set(wanted))) if wanted and fetch_images is not None else {}

    def image(fs, i):
        if fs.images is not None:
            return fs.images[i]
        return found.get(str(fs.ids[i])) if fs.ids is not None else None

    def name(fs, i):
        c = int(fs.labels[i])
        cls = fs.class_names[c] if fs.class_names and 0 <= c < len(fs.class_names) else str(c)
        return cls + (f"\n{fs.ids[i]}" if fs.ids is not None else "")

    rows = []
    for r, q in enumerate(picks):
        results = [{"image": image(gallery, j), "caption": f"{name(gallery, j)}\nd={dist[r, c]:.3g}",
                    "correct": bool(gallery.labels[j] == labels[q])} for c, j in enumerate(idx[r])]
        rows.append({"query": {"image": image(query_set, q), "caption": "query\n" + name(query_set, q)},
                     "results": results})
    note = missing_images_note(query_set, gallery_set, fetched=bool(wanted) and len(found) == len(set(wanted)))
    title = f"nearest items ({metric}); green: same class" + (f"\n{note}" if note else "")
    return plot_result_grid(rows, out_path, title=title)


def write_report_plots(report: dict, query_set, gallery_set, out_dir, *, metric: str = "l2",
                       max_points: int = 2000, examples: int = 8, seed: int = 0, fetch_images=None) -> list[str]:
    """t-SNE and PCA scatters, the precision-recall curve and the example grid into `out_dir`
    (`fetch_images`: see plot_example_queries)."""
    os.makedirs(out_dir, exist_ok=True)
    feats = query_set.features
    labels = query_set.labels
    names = query_set.class_names
    written = [
        plot_embedding(feats, labels, os.path.join(out_dir, "tsne.png"), method="tsne", class_names=names,
                       max_points=max_points, seed=seed),
        plot_embedding(feats, labels, os.path.join(out_dir, "pca.png"), method="pca", class_names=names,
                       max_points=max_points, seed=seed),
        plot_pr_curve(report, os.path.join(out_dir, "precision_recall.png")),
        plot_example_queries(query_set, gallery_set, os.path.join(out_dir, "examples.png"), metric=metric,
                             examples=examples, seed=seed, fetch_images=fetch_images),
    ]
    return written
