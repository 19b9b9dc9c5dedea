"""The candidate classes of zero-shot classification and the text each is named by.

Classes are taxa (their seven ranks), cut at the evaluation rank: a record labelled to
species counts as its genus when evaluating at genus, and a record labelled above the
evaluation rank stays at its own rank (it is evaluated there). The candidates are the
distinct taxa of the evaluated set, plus those of a taxonomy file when one is given.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

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
        """From label rows (rank columns, ``common_name``, ``scientific_name``). Neither the class
        ids (the sorted ranks) nor the names depend on the order rows arrive in: where records of
        one taxon disagree, the name most of them give wins (ties: the first in sort order)."""
        first: dict[tuple, Taxon] = {}
        common: dict[tuple, Counter] = defaultdict(Counter)
        as_is: dict[tuple, Counter] = defaultdict(Counter)
        for row in [*rows, *extra]:
            full = Taxon.from_mapping(row)
            taxon = full.truncated(rank)
            if taxon.label_rank is None:
                continue
            key = taxon.key()
            first.setdefault(key, taxon)
            if taxon.common_name:
                common[key][taxon.common_name] += 1
            if taxon.label_rank == full.label_rank and row.get("scientific_name"):
                as_is[key][row["scientific_name"]] += 1
        ordered = sorted(first, key=lambda k: tuple(x or "" for x in k))
        taxa = [replace(first[k], common_name=_most_given(common[k])) for k in ordered]
        names = [class_name(t, text_type, _most_given(as_is[k])) for t, k in zip(taxa, ordered)]
        empty = [t.key() for t, n in zip(taxa, names) if not n]
        if empty:
            raise ValueError(f"{len(empty)} classes have no {text_type!r} name, e.g. {empty[0]}")
        return cls(taxa, names)


def _most_given(names: Counter) -> str | None:
    return min(names.items(), key=lambda item: (-item[1], item[0]))[0] if names else None


def truth_taxon(row: dict, rank: str) -> Taxon:
    """A record's label as scored at ``rank``."""
    return Taxon.from_mapping(row).truncated(rank)
