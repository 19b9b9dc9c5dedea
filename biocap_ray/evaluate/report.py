"""The evaluation report: a Markdown page with the comparison table and three pictures
(accuracy at every rank, the most frequent confusions, retrieval examples)."""

from __future__ import annotations

import io
import textwrap

from biocap_ray.data.taxonomy import RANKS

SUMMARY_COLUMNS = ("top1", "top3", "top5", "top1_macro", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "mean_recall")


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """One flat row per model: zero-shot, per-rank and retrieval numbers side by side."""
    rows = []
    for name, res in results.items():
        row = {"model": name, **res.get("zero_shot", {}), **res.get("retrieval", {})}
        rows.append(row)
    return rows


def _pct(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else "–"


def markdown(results: dict[str, dict], setup: dict, pictures: dict[str, str]) -> str:
    rows = comparison_rows(results)
    ranks = [r for r in RANKS if any(f"acc_{r}" in row for row in rows)]
    lines = ["# Evaluation report", ""]
    lines += [f"- **{k}**: {v}" for k, v in setup.items()]
    lines += ["", "## Comparison (%)", ""]
    cols = [c for c in SUMMARY_COLUMNS if any(c in row for row in rows)]
    lines.append("| model | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(_pct(row.get(c)) for c in cols) + " |")
    if ranks:
        lines += ["", "## Top-1 accuracy at every rank (%)", "",
                  "Predicted at the evaluation rank; right at a rank when the prediction's ancestor there is the label's.",
                  "", "| model | " + " | ".join(ranks) + " |", "|---" * (len(ranks) + 1) + "|"]
        for row in rows:
            lines.append(f"| {row['model']} | " + " | ".join(_pct(row.get(f'acc_{r}')) for r in ranks) + " |")
    for name, res in results.items():
        if res.get("confusions"):
            lines += ["", f"## Most frequent confusions: {name}", "", "| label | predicted | count |", "|---|---|---|"]
            lines += [f"| {a} | {b} | {n} |" for a, b, n in res["confusions"]]
        if res.get("errors"):
            lines += ["", f"{res['errors']} unreadable images were skipped (see errors.json)."]
    for title, file in pictures.items():
        lines += ["", f"## {title}", "", f"![{title}]({file})"]
    return "\n".join(lines) + "\n"


def plot_ranks(results: dict[str, dict]) -> bytes:
    ranks = [r for r in RANKS if any(f"acc_{r}" in res.get("zero_shot", {}) for res in results.values())]
    fig, ax = subplots(figsize=(8, 4))
    width = 0.8 / max(len(results), 1)
    for i, (name, res) in enumerate(results.items()):
        zs = res.get("zero_shot", {})
        ax.bar([j + i * width for j in range(len(ranks))], [100 * zs.get(f"acc_{r}", 0) for r in ranks],
               width=width, label=name)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(ranks))], ranks)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Zero-shot accuracy at every rank")
    ax.legend(fontsize="small")
    return png(fig)


def plot_confusions(name: str, confusions: list[tuple[str, str, int]]) -> bytes:
    fig, ax = subplots(figsize=(8, 0.5 + 0.4 * max(len(confusions), 1)))
    labels = [f"{_short(a)} → {_short(b)}" for a, b, _ in confusions][::-1]
    ax.barh(labels, [n for _, _, n in confusions][::-1])
    ax.set_xlabel("images")
    ax.set_title(f"Most frequent confusions ({name})")
    return png(fig)


def plot_retrieval(examples: list[dict]) -> bytes:
    """Each example: ``image`` (PIL), ``caption`` (its own), ``retrieved`` [(caption, is_own)]."""
    fig, axes = subplots(len(examples), 2, figsize=(10, 2.6 * len(examples)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3]})
    for (img_ax, txt_ax), ex in zip(axes, examples):
        img_ax.imshow(ex["image"])
        img_ax.axis("off")
        txt_ax.axis("off")
        text = [f"own: {_wrap(ex['caption'])}", "retrieved:"]
        text += [f"{'✓' if own else '✗'} {i + 1}. {_wrap(c)}" for i, (c, own) in enumerate(ex["retrieved"])]
        txt_ax.text(0, 1, "\n".join(text), va="top", fontsize=8, family="monospace")
    fig.suptitle("Image → caption retrieval examples")
    return png(fig)


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _wrap(text: str) -> str:
    return textwrap.shorten(text, 160).replace("\n", " ")


def subplots(*args, **kwargs):
    """matplotlib figures without a display (jobs run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
