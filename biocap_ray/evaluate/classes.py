"""The candidate classes of zero-shot classification and the text each is named by.

Classes are taxa (their seven ranks), cut at the evaluation rank: a record labelled to
species counts as its genus when evaluating at genus, and a record labelled above the
evaluation rank stays at its own rank (it is evaluated there). The candidates are the
distinct taxa of the evaluated set, plus those of a taxonomy file when one is given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import open_clip

from biocap_ray.data.taxonomy import Taxon

TEMPLATES = {
    "openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
    "photo": ("a photo of {}.",),
}


def class_name(taxon: Taxon, text_type: str, as_is: str | None = None) -> str:
    """The name put into the templates: the dataset's own name (``as-is``) or a text type."""
    if text_type == "as-is":
        return as_is or taxon.scientific_name or ""
    return taxon.name(text_type) or ""


@dataclass
class ClassSet:
    """Candidate taxa (index = class id) and their names in the chosen text type."""

    taxa: list[Taxon]
    names: list[str]
    _index: dict[tuple, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {t.key(): i for i, t in enumerate(self.taxa)}

    def __len__(self) -> int:
        return len(self.taxa)

    def index(self, taxon: Taxon) -> int:
        return self._index[taxon.key()]

    @classmethod
    def build(cls, rows: Iterable[dict], text_type: str, rank: str = "species",
              extra: Iterable[dict] = ()) -> ClassSet:
        """From label rows (rank columns, ``common_name``, ``scientific_name``); class ids follow
        the sorted ranks, so they do not depend on the order rows arrive in."""
        seen: dict[tuple, tuple[Taxon, str | None]] = {}
        for row in [*rows, *extra]:
            full = Taxon.from_mapping(row)
            taxon = full.truncated(rank)
            if taxon.label_rank is None:
                continue
            key = taxon.key()
            if key not in seen or (seen[key][0].common_name is None and taxon.common_name):
                as_is = row.get("scientific_name") if taxon.label_rank == full.label_rank else None
                seen[key] = (taxon, as_is)
        ordered = sorted(seen.values(), key=lambda item: tuple(x or "" for x in item[0].key()))
        taxa = [t for t, _ in ordered]
        names = [class_name(t, text_type, as_is) for t, as_is in ordered]
        empty = [t.key() for t, n in zip(taxa, names) if not n]
        if empty:
            raise ValueError(f"{len(empty)} classes have no {text_type!r} name, e.g. {empty[0]}")
        return cls(taxa, names)


def truth_taxon(row: dict, rank: str) -> Taxon:
    """A record's label as scored at ``rank``."""
    return Taxon.from_mapping(row).truncated(rank)
