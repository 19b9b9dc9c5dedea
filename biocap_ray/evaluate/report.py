"""The evaluation report: a Markdown page with the comparison table and three pictures
(accuracy at every rank, the most frequent confusions, retrieval examples)."""

from __future__ import annotations

import textwrap

from biocap_ray.data.taxonomy import RANKS
from biocap_ray.evaluate.embed import RETRIEVAL
from biocap_ray.plots import png, subplots

ZERO_SHOT_COLUMNS = ("top1", "top3", "top5", "top1_macro", "top1_exact", "top5_exact", "top1_exact_macro")
RETRIEVAL_COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall")


def flat_metrics(result: dict) -> dict[str, float]:
    """One model's numbers under unambiguous flat names: zero-shot as is, retrieval as
    ``<variant>_<metric>`` (``paper_i2t_r1``, ``caption_projector_i2t_r1``)."""
    out = dict(result.get("zero_shot", {}))
    for variant in RETRIEVAL:
        out.update({f"{variant}_{k}": v for k, v in result.get(f"retrieval_{variant}", {}).items()})
    return out


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """One flat row per model: zero-shot, per-rank and retrieval numbers side by side."""
    return [{"model": name, **flat_metrics(res)} for name, res in results.items()]


def _pct(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else "–"


def markdown(results: dict[str, dict], setup: dict, pictures: dict[str, str]) -> str:
    rows = comparison_rows(results)
    ranks = [r for r in RANKS if any(f"acc_{r}" in row for row in rows)]
    lines = ["# Evaluation report", ""]
    lines += [f"- **{k}**: {v}" for k, v in setup.items()]
    lines += ["", "## Zero-shot classification (%)", "",
              "`top<k>` counts a record labelled above the evaluation rank as right when any of its descendants"
              " is predicted; `top<k>_exact` only when its own class is (the standard accuracy).", ""]
    cols = [c for c in ZERO_SHOT_COLUMNS if any(c in row for row in rows)]
    lines.append("| model | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(_pct(row.get(c)) for c in cols) + " |")
    if any(f"retrieval_{v}" in res for res in results.values() for v in RETRIEVAL):
        lines += ["", "## Image-caption retrieval (%)", "",
                  "`paper`: label projector and \"a photo of \" + caption, the published tables' variant;"
                  " `caption_projector`: the caption projector on the caption as written. Compare only like with like.",
                  "", "| model | variant | " + " | ".join(RETRIEVAL_COLUMNS) + " |",
                  "|---" * (len(RETRIEVAL_COLUMNS) + 2) + "|"]
        for name, res in results.items():
            for variant in RETRIEVAL:
                got = res.get(f"retrieval_{variant}")
                if got:
                    lines.append(f"| {name} | {variant} | " + " | ".join(_pct(got.get(c)) for c in RETRIEVAL_COLUMNS)
                                 + " |")
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
    """Caption text as the plot's font can draw it: what a broken model writes (control characters,
    anything beyond the Latin alphabets) becomes ``·`` instead of missing-glyph warnings."""
    drawable = "".join(ch if ch.isprintable() and ord(ch) < 0x0250 else "\u00b7" for ch in text.replace("\n", " "))
    return textwrap.shorten(drawable, 160)
