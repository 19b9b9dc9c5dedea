"""The caption stage's view of the context: record → Wikipedia excerpt + format examples.

Built once from the context table and the format examples into plain dicts (no I/O per row),
picklable, and memoised per distinct taxon, so joining millions of records inside a Ray Data
``map_batches`` costs a dict lookup per row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from biocap_ray.context.examples import FormatExamples
from biocap_ray.context.table import read_context
from biocap_ray.context.taxa import HIGHER_RANKS, LINEAGE, clean_name
from biocap_ray.data.taxonomy import RANKS

TEXT_LEVELS: tuple[str, ...] = ("species", "genus", *HIGHER_RANKS)  # most specific first
@dataclass(frozen=True)
class SpeciesContext:
    """What the caption prompt needs for one record, and where it came from."""

    text: str | None  # Wikipedia visual excerpt of the most specific taxon that has one
    text_level: str | None  # "species", "genus", "family", "order", "class" or None
    title: str | None  # Wikipedia page title (attribution)
    url: str | None
    examples: tuple[str, ...]  # caption format examples
    examples_level: str  # "class", "phylum", "kingdom" or "default"
    examples_from: str | None  # the taxon the examples belong to (None for the default set)
    hash: str  # short, stable hash of (text, examples): equal context ⇔ equal hash


def context_hash(text: str | None, examples: Iterable[str]) -> str:
    payload = json.dumps([text or "", list(examples)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _lineage_fits(entry: Mapping, record_lineage: Mapping) -> int | None:
    """How many lineage ranks agree, or None when one disagrees (a homonym from another branch)."""
    agree = 0
    for rank in LINEAGE:
        have, want = entry.get(rank), record_lineage.get(rank)
        if have and want:
            if have.lower() != want.lower():
                return None
            agree += 1
    return agree


class ContextLookup:
    """record (dict with ranks) → :class:`SpeciesContext`: the species' text, else the genus',
    else the family's, order's or class's (a photo labelled only that far gets that text)."""

    def __init__(self, entries: Iterable[Mapping], examples: FormatExamples | None = None) -> None:
        self.examples = examples if examples is not None else FormatExamples.load()
        self.by_name: dict[tuple[str, str], list[dict]] = {}
        for entry in entries:
            if not entry.get("text") or not entry.get("name") or entry.get("rank") not in TEXT_LEVELS:
                continue
            kept = {k: entry.get(k) for k in (*LINEAGE, "text", "page_title", "url")}
            self.by_name.setdefault((entry["rank"], entry["name"].lower()), []).append(kept)
        self._memo: dict[tuple, SpeciesContext] = {}

    @classmethod
    def from_table(cls, table: pa.Table | None, examples: FormatExamples | None = None) -> ContextLookup:
        """From a context table; its lineage columns also teach the examples which classes form a phylum."""
        rows = table.select([c for c in ("rank", "name", *RANKS, "text", "page_title", "url")
                             if c in table.column_names]).to_pylist() if table is not None else []
        examples = examples if examples is not None else FormatExamples.load()
        if rows:
            examples = examples.with_hierarchy(rows)
        return cls(rows, examples)

    @classmethod
    def load(
        cls, context_uri: str | None, examples_uri: str | None = None, taxa: Iterable[Mapping] = ()
    ) -> ContextLookup:
        """From a context table folder (local or s3://; None for examples only) and an examples file."""
        table = read_context(context_uri) if context_uri else None
        examples = FormatExamples.load(examples_uri, hierarchy=taxa)
        return cls.from_table(table, examples)

    def __getstate__(self) -> dict:
        return {"examples": self.examples, "by_name": self.by_name}

    def __setstate__(self, state: dict) -> None:
        self.examples = state["examples"]
        self.by_name = state["by_name"]
        self._memo = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_name.values())

    def _text(self, rank: str, name: str | None, lineage: Mapping) -> dict | None:
        if not name:
            return None
        best, best_fit = None, -1
        for entry in self.by_name.get((rank, name.lower()), ()):
            fit = _lineage_fits(entry, lineage)
            if fit is not None and fit > best_fit:
                best, best_fit = entry, fit
        return best

    def lookup(self, record: Mapping) -> SpeciesContext:
        """The context for one record (ranks as in the record schema; ``species`` may be the epithet)."""
        lineage = {r: (record.get(r) or None) for r in LINEAGE}
        genus, epithet = record.get("genus") or None, record.get("species") or None
        memo_key = (*lineage.values(), genus, epithet, record.get("class") or None,
                    None if (genus and epithet) else record.get("scientific_name"))
        found = self._memo.get(memo_key)
        if found is None:
            found = self._compute(lineage, genus, epithet, record)
            self._memo[memo_key] = found
        return found

    def _compute(self, lineage: Mapping, genus: str | None, epithet: str | None, record: Mapping) -> SpeciesContext:
        genus_name = clean_name(genus)
        genus_name = genus_name.split()[0] if genus_name else None
        binomial = None
        if genus_name and epithet:
            binomial = clean_name(f"{genus_name} {str(epithet).split()[-1]}")
        if binomial is None or " " not in binomial:
            sci = clean_name(record.get("scientific_name"))
            if sci and " " in sci:
                binomial = sci
            genus_name = genus_name or (sci.split()[0] if sci else None)
        names = {"species": binomial, "genus": genus_name, **{r: lineage.get(r) for r in HIGHER_RANKS}}
        entry, level = None, None
        for level in TEXT_LEVELS:
            entry = self._text(level, names[level], lineage)
            if entry is not None:
                break
        examples, ex_level, ex_from = self.examples.for_taxon(
            lineage.get("kingdom"), lineage.get("phylum"), lineage.get("class")
        )
        text = entry["text"] if entry else None
        return SpeciesContext(
            text=text,
            text_level=level if entry else None,
            title=entry["page_title"] if entry else None,
            url=entry["url"] if entry else None,
            examples=tuple(examples),
            examples_level=ex_level,
            examples_from=ex_from,
            hash=context_hash(text, examples),
        )
