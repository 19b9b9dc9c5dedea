"""Offline import: a file of Wikipedia texts (JSONL, JSON or Parquet) into the context table,
for clusters without internet access and for the demo. Resumable like the fetch job."""

from __future__ import annotations

import json
import posixpath
from collections import Counter

import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.config import Config
from biocap_ray.context import table as ctable
from biocap_ray.context.extract import visual_sentences


def _import_rows(src: str, problems: Counter) -> list[dict]:
    lower = src.lower()
    if lower.endswith(".parquet"):
        fs, path = storage.resolve(src)
        return pq.read_table(path, filesystem=fs).to_pylist()
    text = storage.decode_text(storage.read_bytes(src), problems)
    if lower.endswith(".json") and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            problems["malformed_lines"] += 1
            continue
        if isinstance(value, dict):
            rows.append(value)
        else:
            problems["malformed_lines"] += 1
    return rows


def _title_from_url(url: str | None) -> str | None:
    if not url or "/wiki/" not in url:
        return None
    from urllib.parse import unquote

    return unquote(url.rsplit("/wiki/", 1)[1]).replace("_", " ") or None


def import_context(src: str, dst: str, cfg: Config, *, overwrite: bool = False) -> dict:
    """Turn a JSONL/JSON/Parquet of (scientific_name, text[, common_name, wikipedia_url, …]) into the table."""
    from biocap_ray.context.taxa import taxon_query

    ccfg = cfg.context
    if overwrite:
        ctable.remove_parts(dst)
    problems: Counter = Counter()
    raw = _import_rows(src, problems)
    if raw and "text" not in raw[0] and "description" not in raw[0]:
        raise ValueError(f"{storage.redact(src)}: expected a 'text' column; found {', '.join(raw[0])}")
    done = ctable.done_keys(dst)
    summary = ctable.new_summary(0, problems)
    writer = ctable.PartWriter(dst, ccfg.rows_per_file, done)
    keys: set[str] = set()
    origin = posixpath.basename(src.rstrip("/"))
    for item in raw:
        query = taxon_query(item, problems)
        if query is None:
            continue
        if query["key"] in keys:
            problems["duplicate_taxa"] += 1
            continue
        keys.add(query["key"])
        if query["key"] in done:
            summary["skipped_done"] += 1
            continue
        source_text = item.get("text") or item.get("description")
        if not isinstance(source_text, str):
            source_text = None
        text = visual_sentences(source_text, max_chars=ccfg.max_chars) if source_text else ""
        status = "ok" if text else ("empty" if not (source_text or "").strip() else "no_visual_text")
        url = item.get("wikipedia_url") or item.get("url")
        revision = item.get("revision_id")
        row = {
            **query,
            "text": text or None,
            "status": status,
            "section": item.get("section") or "lead",
            "match": "import",
            "page_title": item.get("page_title") or _title_from_url(url),
            "revision_id": int(revision) if isinstance(revision, (int, str)) and str(revision).isdigit() else None,
            "url": url,
            "licence": item.get("licence") or item.get("license") or "CC BY-SA 4.0",
            "source": f"import:{origin}",
        }
        summary["status"][status] += 1
        summary["processed"] += 1
        writer.add(row)
    writer.flush()
    summary["taxa"] = len(keys)
    summary["problems"] = dict(sorted(problems.items()))
    summary["rows_written"], summary["files_written"] = writer.rows, writer.seq
    return ctable.finish_summary(summary, dst)
