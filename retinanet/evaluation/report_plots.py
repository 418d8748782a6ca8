"""Report figures as PNG bytes: precision-recall curves from an accumulated COCOeval, the confusion matrix.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
they work headless and do not disturb a caller's matplotlib state.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def pr_curves(precision: np.ndarray, iou_thrs: np.ndarray, rec_thrs: np.ndarray, names: Sequence[str],
              ious: Sequence[float] = (0.5, 0.75)) -> bytes:
    """One panel per IoU in ``ious``, one line per class: COCOeval's interpolated precision
    ``precision`` (T, R, K, A, M) at area "all" (A index 0) and the largest max-dets (M index -1),
    against the recall points ``rec_thrs`` (R,). Entries of -1 (class without ground truth) are not drawn."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5.2 * len(ious), 4.4))
    for j, iou in enumerate(ious):
        ax = fig.add_subplot(1, len(ious), j + 1)
        t = int(np.argmin(np.abs(np.asarray(iou_thrs) - iou)))
        for k, name in enumerate(names):
            p = precision[t, :, k, 0, 2]  # maxDets 100, as the per-class AP
            if (p < 0).all():
                continue
            ap = float(p[p >= 0].mean()) * 100
            ax.plot(rec_thrs, np.where(p >= 0, p, np.nan), label=f"{name} (AP {ap:.1f})", linewidth=1.6)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"precision-recall at IoU {iou_thrs[t]:.2f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def confusion_plot(counts: np.ndarray, normalized: np.ndarray, names: Sequence[str], score_thresh: float,
                   iou_thresh: float = 0.5) -> bytes:
    """Heatmap of the row-normalised (K + 1, K + 1) matrix (layout in ``confusion.py``), each cell
    labelled with its share and count."""
    from matplotlib.figure import Figure
    labels = list(names) + ["background"]
    n = len(labels)
    side = max(4.5, 0.6 * n + 2.5)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted (background = missed)", ylabel="ground truth (background = false positive)",
           title=f"confusion, rows normalised (score >= {score_thresh:g}, IoU >= {iou_thresh:g})")
    if n <= 30:  # cell text becomes unreadable beyond that
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{normalized[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                            color="white" if normalized[i, j] > 0.5 else "black")
    return _png(fig)


def histogram_plot(per_class: dict[str, int], per_size: dict[str, int], title: str) -> bytes:
    """Two bar charts: boxes per class and boxes per COCO size bucket."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4))
    for j, (data, what) in enumerate(((per_class, "class"), (per_size, "size (COCO area buckets)"))):
        ax = fig.add_subplot(1, 2, j + 1)
        ax.bar(range(len(data)), list(data.values()), color="tab:blue" if j == 0 else "tab:orange")
        ax.set_xticks(range(len(data)), list(data.keys()), rotation=45 if len(data) > 6 else 0, ha="right")
        ax.set(ylabel="boxes", title=f"{title}: boxes per {what}")
        ax.grid(alpha=0.3, axis="y")
    return _png(fig)
