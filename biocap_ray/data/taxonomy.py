"""Taxonomic labels and the BioCLIP text types derived from them.

Ranks may be missing at any level (images labelled to genus, family, ...). Texts then use
the ranks that exist; ``sci`` falls back to the lowest named rank, ``*_com`` forms fall back
to their plain form when there is no common name.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
TEXT_TYPES: tuple[str, ...] = ("sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com")

_PREFIX = "a photo of "


def _clean(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas
        return None
    text = " ".join(str(value).split())
    return text or None


@dataclass(frozen=True)
class Taxon:
    """A taxonomic label: the seven ranks (``species`` is the epithet) and a common name."""

    kingdom: str | None = None
    phylum: str | None = None
    class_: str | None = None
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    species: str | None = None
    common_name: str | None = None

    @classmethod
    def from_mapping(cls, row: dict) -> Taxon:
        """Build from a row with rank columns (``class`` or ``class_``); blanks become None."""
        values = {r: _clean(row.get(r)) for r in RANKS}
        genus, species = values["genus"], values["species"]
        if genus and species and species.startswith(genus + " "):
            values["species"] = species[len(genus) + 1 :]  # "Puma concolor" given as the epithet
        if values["class"] is None:
            values["class"] = _clean(row.get("class_"))
        if not any(values.values()):
            sci = _clean(row.get("scientific_name"))
            if sci:
                values.update(_from_scientific_name(sci))
        return cls(
            **{("class_" if r == "class" else r): values[r] for r in RANKS},
            common_name=_clean(row.get("common_name")),
        )

    def rank(self, name: str) -> str | None:
        return getattr(self, "class_" if name == "class" else name)

    def ranks(self) -> dict[str, str | None]:
        return {r: self.rank(r) for r in RANKS}

    @property
    def label_rank(self) -> str | None:
        """The lowest rank that is named (``species`` for a full binomial)."""
        present = [r for r in RANKS if self.rank(r)]
        return present[-1] if present else None

    @property
    def scientific_name(self) -> str | None:
        """``Genus species`` when both are known, else the name of the lowest named rank."""
        if self.genus and self.species:
            return f"{self.genus} {self.species}"
        if self.species:
            return self.species
        low = self.label_rank
        return self.rank(low) if low else None

    def as_dict(self) -> dict[str, str | None]:
        out = self.ranks()
        out["common_name"] = self.common_name
        return out

    def name(self, text_type: str) -> str | None:
        """The bare name in one text type (``Acinonyx jubatus``), for prompt templates."""
        try:
            return _BUILDERS[text_type](self)
        except KeyError:
            raise ValueError(f"unknown text type {text_type!r}; known: {', '.join(TEXT_TYPES)}") from None

    def text(self, text_type: str) -> str:
        """One BioCLIP text type, e.g. ``sci`` → ``a photo of Acinonyx jubatus.``"""
        body = self.name(text_type)
        return f"{_PREFIX}{body}." if body else ""

    def key(self) -> tuple[str | None, ...]:
        """Identity of the taxon: its seven ranks (the common name is not part of it)."""
        return tuple(self.rank(r) for r in RANKS)

    def truncated(self, rank: str) -> Taxon:
        """The ancestor at ``rank`` (itself when it is labelled above that rank)."""
        keep = RANKS[: RANKS.index(rank) + 1]
        cut = {("class_" if r == "class" else r): (self.rank(r) if r in keep else None) for r in RANKS}
        return Taxon(**cut, common_name=self.common_name if self.label_rank in keep else None)

    def texts(self) -> dict[str, str]:
        return {t: self.text(t) for t in TEXT_TYPES}


def _from_scientific_name(name: str) -> dict[str, str | None]:
    """Split ``Genus species (Author, year)`` into genus and epithet; one word is a genus or higher."""
    name = re.sub(r"\s*\(.*?\)|\s+[A-Z][a-z]*\.?,?\s*\d{4}$", "", name).strip()
    parts = name.split()
    if len(parts) >= 2 and parts[1].islower():
        return {"genus": parts[0], "species": parts[1]}
    return {"genus": parts[0]} if parts else {}


def _with_common(base: str | None, taxon: Taxon) -> str | None:
    if base and taxon.common_name:
        return f"{base} with common name {taxon.common_name}"
    return base


def _taxon_words(t: Taxon) -> str | None:
    words = [t.rank(r) for r in RANKS if t.rank(r)]
    return " ".join(words) or None


def _taxon_tags(t: Taxon) -> str | None:
    words = [f"{r} {t.rank(r)}" for r in RANKS if t.rank(r)]
    return " ".join(words) or None


_BUILDERS = {
    "sci": lambda t: t.scientific_name,
    "com": lambda t: t.common_name or t.scientific_name,
    "taxon": _taxon_words,
    "sci_com": lambda t: _with_common(t.scientific_name, t),
    "taxon_com": lambda t: _with_common(_taxon_words(t), t),
    "taxonTag": _taxon_tags,
    "taxonTag_com": lambda t: _with_common(_taxon_tags(t), t),
}


def parse_taxon_tag(text: str) -> dict[str, str]:
    """Inverse of the ``taxonTag`` text: ``a photo of kingdom Animalia ... species leo.`` → ranks."""
    body = text.strip().removeprefix(_PREFIX).rstrip(".")
    body = body.split(" with common name ", 1)[0]
    words = body.split()
    out: dict[str, str] = {}
    i = 0
    while i + 1 < len(words):
        if words[i] in RANKS:
            out[words[i]] = words[i + 1]
            i += 2
        else:
            i += 1
    return out


def parse_common_name(com_text: str, sci_text: str) -> str | None:
    """The common name inside a ``com`` text, or None when it only repeats the scientific name."""
    com = com_text.strip().removeprefix(_PREFIX).rstrip(".")
    sci = sci_text.strip().removeprefix(_PREFIX).rstrip(".")
    return com if com and com != sci else None




def is_taxon_list(uri: str) -> bool:
    """A CSV/TSV without a ``file`` column, or a Parquet without ``image``, lists taxa, not images."""
    import csv

    from biocap_ray import storage

    lower = uri.lower()
    if lower.endswith((".csv", ".tsv")):
        head = storage.read_bytes(uri)[:65536].decode("utf-8-sig", errors="replace").splitlines()[:1]
        header = next(csv.reader(head, delimiter="\t" if lower.endswith(".tsv") else ","), [])
        return "file" not in [h.strip() for h in header]
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        fs, path = storage.resolve(uri)
        return "image" not in pq.read_schema(path, filesystem=fs).names
    return False


def read_taxon_list(uri: str, problems: Counter | None = None) -> list[dict]:
    """The rows of a taxon list (CSV, TSV or Parquet; local or s3://): rank columns and/or
    ``scientific_name``, optionally ``common_name``. CSV values are strings; lines that are not
    UTF-8 are read with replacement characters and counted in ``problems["non_utf8_lines"]``."""
    import csv
    import io

    from biocap_ray import storage

    if uri.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        fs, path = storage.resolve(uri)
        rows = pq.read_table(path, filesystem=fs).to_pylist()
        columns = list(rows[0]) if rows else []
    else:
        text = storage.decode_text(storage.read_bytes(uri), problems)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if uri.lower().endswith(".tsv") else ",")
        rows, columns = list(reader), reader.fieldnames or []
    if rows and not any(c in columns for c in ("genus", "scientific_name")):
        raise ValueError(f"{storage.redact(uri)}: a taxon list needs a 'genus' or 'scientific_name' column;"
                         f" found {', '.join(columns)}")
    return rows
