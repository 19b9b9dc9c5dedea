"""The captions page: a sample of captions beside their images and what went into their prompts.

Judging captions means looking at them, as BioCAP's authors did by hand. While the caption job
runs, its prepare tasks keep a sample of their records (chosen by a hash of the uid, so reruns
and resumes pick the same ones): a thumbnail, the taxon, the Wikipedia excerpt, the format
examples and the prompt, in small Parquet files under ``_page/``. At the end the driver reads
those few rows, fetches their captions with a filter in the cluster, and writes ``captions.html``
(self-contained: thumbnails inline) beside the caption parts.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.caption import outputs
from biocap_ray.caption.quality import QC_FLAGS, printable

PAGE_DIR = "_page"
PAGE_FILE = "captions.html"
THUMBNAIL_PX = 192
OVERSAMPLE = 4  # samples kept per row shown, so a resumed run still has enough

SAMPLE_SCHEMA = pa.schema([
    ("uid", pa.string()), ("pick", pa.float64()), ("thumbnail", pa.binary()), ("taxon", pa.string()),
    ("lineage", pa.string()), ("context_text", pa.string()), ("context_level", pa.string()),
    ("context_url", pa.string()), ("examples", pa.list_(pa.string())), ("examples_level", pa.string()),
    ("prompt", pa.string()),
])


def pick(uid: str) -> float:
    """A uid's place in the sample order, uniform in [0, 1) and the same on every run."""
    return int.from_bytes(hashlib.sha1(uid.encode()).digest()[:8], "big") / 2**64


def sample_rate(rows: int, expected: int | None) -> float:
    """The share of records to keep so that about ``OVERSAMPLE * rows`` are kept."""
    if rows == 0:
        return 0.0
    return 1.0 if not expected else min(1.0, OVERSAMPLE * rows / expected)


def keep_samples(records: pa.Table, prepared: dict, setup, folder: str, rate: float) -> None:
    """Write the sampled rows of one prepared batch (``prepared``: prepare's column lists)."""
    from biocap_ray.caption.prepare import organism_name
    from biocap_ray.data.images import load_rgb
    from biocap_ray.data.taxonomy import RANKS

    chosen = [i for i, uid in enumerate(prepared["uid"]) if pick(uid) < rate]
    if not chosen:
        return
    wanted = {prepared["uid"][i] for i in chosen}
    by_uid = {r["uid"]: r for r in records.filter(pc.is_in(records.column("uid"), pa.array(list(wanted))))
              .to_pylist()}
    rows = []
    for i in chosen:
        uid = prepared["uid"][i]
        record = by_uid[uid]
        ctx = setup.lookup.lookup(record)
        image = load_rgb(record["image"], setup.max_pixels, draft=THUMBNAIL_PX)
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=80)
        rows.append({
            "uid": uid, "pick": pick(uid), "thumbnail": jpeg.getvalue(), "taxon": organism_name(record),
            "lineage": " › ".join(record[r] for r in RANKS if record.get(r)),
            "context_text": ctx.text, "context_level": ctx.text_level, "context_url": ctx.url,
            "examples": list(ctx.examples), "examples_level": ctx.examples_level, "prompt": prepared["prompt"][i],
        })
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    digest = hashlib.sha1("\n".join(sorted(wanted)).encode()).hexdigest()[:20]
    storage.write_bytes(storage.join(folder, PAGE_DIR, f"sample-{digest}.parquet"), storage.parquet_bytes(table))


def _samples(folder: str, rows: int) -> pa.Table | None:
    uri = storage.join(folder, PAGE_DIR)
    if rows == 0 or not storage.exists(uri):
        return None
    fs, _ = storage.resolve(uri)
    tables = [pq.read_table(p, filesystem=fs, schema=SAMPLE_SCHEMA) for p in storage.list_files(uri, (".parquet",))]
    if not tables:
        return None
    table = pa.concat_tables(tables).sort_by("pick")
    first = pc.equal(pc.index_in(table.column("uid"), value_set=table.column("uid")), pa.array(range(len(table))))
    return table.filter(first).slice(0, rows)


def write_page(folder: str, rows: int, summary: dict) -> str | None:
    """Write ``captions.html`` for up to ``rows`` sampled captions; returns its URI (None: no samples)."""
    from ray.data.expressions import col

    samples = _samples(folder, rows)
    ds = outputs.dataset(folder, ["uid", "caption", *QC_FLAGS, "qc_pass", "attempt", "error"])
    if samples is None or ds is None:
        return None
    found = ds.filter(expr=col("uid").is_in(samples.column("uid").to_pylist())).take_all()
    captions = {r["uid"]: r for r in found}
    uri = storage.join(folder, PAGE_FILE)
    storage.write_bytes(uri, render(samples.to_pylist(), captions, summary).encode())
    return uri


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
.card{display:flex;gap:1em;border-top:1px solid #ddd;padding:1em 0}
.card img{width:192px;height:auto;flex:none;border-radius:4px}
.caption{font-size:1.15em;margin:.3em 0}
.flag{display:inline-block;background:#fde2e1;color:#8a1c14;border-radius:3px;padding:0 .4em;margin:.1em}
.pass{background:#e1f5e4;color:#1b5e20}
.muted{color:#666;font-size:.9em} pre{white-space:pre-wrap;font-size:.8em;background:#f6f6f6;padding:.5em}
"""


def _card(sample: dict, row: dict | None) -> str:
    e = html.escape
    if row is None:
        verdict, text = '<span class="flag">no caption row</span>', ""
    elif row["error"]:
        verdict, text = f'<span class="flag">error: {e(printable(row["error"]))}</span>', ""
    else:
        failed = [f.removeprefix("qc_") for f in QC_FLAGS if row.get(f)]
        verdict = ('<span class="flag pass">QC pass</span>' if row["qc_pass"] else
                   "".join(f'<span class="flag">{e(f)}</span>' for f in failed))
        if row.get("attempt"):
            verdict += f' <span class="muted">(attempt {row["attempt"] + 1})</span>'
        text = e(printable(row["caption"]))
    if sample["context_text"]:
        link = f' <a href="{e(sample["context_url"])}">source</a>' if sample["context_url"] else ""
        context = (f'<p class="muted">Wikipedia excerpt ({e(sample["context_level"])} level){link}:</p>'
                   f'<blockquote>{e(sample["context_text"])}</blockquote>')
    else:
        context = '<p class="muted">No Wikipedia excerpt for this taxon: the prompt went without one.</p>'
    examples = "".join(f"<li>{e(x)}</li>" for x in sample["examples"] or [])
    thumb = base64.b64encode(sample["thumbnail"]).decode()
    return (f'<div class="card"><img src="data:image/jpeg;base64,{thumb}" alt="{e(sample["uid"])}">'
            f'<div><b>{e(sample["taxon"])}</b> <span class="muted">{e(sample["uid"])}</span>'
            f'<div class="muted">{e(sample["lineage"])}</div>'
            f'<p class="caption">{text or "<i>(none)</i>"}</p><div>{verdict}</div>{context}'
            f'<details><summary class="muted">format examples ({e(sample["examples_level"] or "")} level)'
            f'</summary><ol>{examples}</ol></details>'
            f'<details><summary class="muted">the prompt as the engine saw it</summary>'
            f'<pre>{e(printable(sample["prompt"]))}</pre></details></div></div>')


def render(samples: list[dict], captions: dict[str, dict], summary: dict) -> str:
    levels = summary.get("context_levels") or {}
    coverage = ", ".join(f"{k} {v}" for k, v in levels.items())  # ordered by ``summarize``
    failures = ", ".join(f"{k.removeprefix('qc_')} {v}" for k, v in (summary.get("qc_failures") or {}).items() if v)
    head = (f"<p>{summary.get('captioned', 0)} captions ({summary.get('errors', 0)} errors); "
            f"QC pass rate {100 * (summary.get('qc_pass_rate') or 0):.1f}%"
            f"{' (failed checks: ' + html.escape(failures) + ')' if failures else ''}.<br>"
            f"Wikipedia excerpt in the prompt, by level: {html.escape(coverage) or 'n/a'}.</p>"
            f"<p class='muted'>{len(samples)} captions sampled by a hash of their uid; the same ones on every run.</p>")
    cards = "".join(_card(s, captions.get(s["uid"])) for s in samples)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Captions</title>"
            f"<style>{_STYLE}</style></head><body><h1>Captions beside their images</h1>{head}{cards}</body></html>")
