"""Zero-shot and retrieval metrics from predictions and embeddings (plain numpy, no model).

``top<k>``: a prediction is right at a record's own label rank when the predicted class agrees
with the label on every rank the label names down to that rank; so a record labelled only to
genus is right when any species (or the genus itself) of that genus is predicted. This is
deliberate: such a record says nothing against any of its descendants. ``top<k>_exact`` is the
standard accuracy (CLIP_benchmark's, BioCLIP's): right only when the predicted class is the
label's own class. On a set labelled to the evaluation rank the two are equal.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from biocap_ray.data.taxonomy import RANKS, Taxon

TOPK = (1, 3, 5)  # the zero-shot top-k accuracies reported, in evaluation and validation alike


def agrees(pred: Taxon, truth: Taxon, down_to: str | None = None) -> bool:
    """``pred`` matches every rank ``truth`` names, down to ``down_to`` (default: its label rank)."""
    last = RANKS.index(down_to or truth.label_rank)
    return all(pred.rank(r) == truth.rank(r) for r in RANKS[: last + 1] if truth.rank(r) is not None)


def zero_shot_metrics(truth: list[Taxon], topk: np.ndarray, classes: list[Taxon],
                      ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, float]:
    """Top-k accuracy (micro over records, macro over label classes) and top-1 at every rank.

    ``topk[i]`` holds record i's predicted class ids, best first (at least max(ks) columns, or
    as many as there are classes).
    """
    n = len(truth)
    if n == 0:
        raise ValueError("no records to score")
    hits = np.array([[agrees(classes[c], t) for c in row] for row, t in zip(topk, truth)], dtype=bool)
    exact = np.array([[classes[c].key() == t.key() for c in row] for row, t in zip(topk, truth)], dtype=bool)
    out: dict[str, float] = {"n": float(n), "classes": float(len(classes))}
    by_label: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(truth):
        by_label[t.key()].append(i)
    for k in ks:
        hit_k = hits[:, :k].any(axis=1)
        out[f"top{k}"] = float(hit_k.mean())
        out[f"top{k}_macro"] = float(np.mean([hit_k[idx].mean() for idx in by_label.values()]))
        exact_k = exact[:, :k].any(axis=1)
        out[f"top{k}_exact"] = float(exact_k.mean())
        out[f"top{k}_exact_macro"] = float(np.mean([exact_k[idx].mean() for idx in by_label.values()]))
    for rank in RANKS:
        scored = [i for i, t in enumerate(truth) if t.rank(rank) is not None]
        if scored:
            right = [classes[topk[i][0]].rank(rank) == truth[i].rank(rank) for i in scored]
            out[f"acc_{rank}"] = float(np.mean(right))
            out[f"n_{rank}"] = float(len(scored))
    return out


def confusions(truth: list[Taxon], top1: np.ndarray, classes: list[Taxon], names: list[str],
               truth_names: list[str], limit: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent (label, predicted) pairs among wrong top-1 predictions."""
    pairs = Counter(
        (truth_names[i], names[c]) for i, (t, c) in enumerate(zip(truth, top1)) if not agrees(classes[c], t)
    )
    return [(a, b, n) for (a, b), n in pairs.most_common(limit)]


def retrieval_ranks(queries: np.ndarray, keys: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For query i, how many keys score strictly higher than key i (0 = retrieved first).

    Ties count in the query's favour, so identical duplicates do not cost recall.
    """
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ keys.T
        own = sims[np.arange(len(sims)), np.arange(start, start + len(sims))]
        ranks[start : start + len(sims)] = (sims > own[:, None]).sum(axis=1)
    return ranks


def recall_at_k(image: np.ndarray, text: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image recall@k for (image i, text i) pairs of normalised embeddings."""
    if len(image) != len(text) or len(image) == 0:
        raise ValueError(f"retrieval needs matching non-empty pairs, got {len(image)} images and {len(text)} texts")
    i2t, t2i = retrieval_ranks(image, text), retrieval_ranks(text, image)
    out = {"pairs": float(len(image))}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t < k).mean())
        out[f"t2i_r{k}"] = float((t2i < k).mean())
    out["mean_recall"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out
