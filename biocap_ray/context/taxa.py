"""Taxon names as Wikipedia and the lookup see them: clean binomials and per-taxon queries.

Input names come with authorship (``Puma concolor (Linnaeus, 1771)``), qualifiers (``cf.``,
``sp.``), odd characters and missing ranks. One query is made per distinct (rank, name,
lineage); every problem met on the way is counted under a short code for the run summary.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping

from biocap_ray.data.taxonomy import RANKS

LINEAGE: tuple[str, ...] = RANKS[:-2]  # kingdom … family: what tells homonyms apart
QUERY_FIELDS: tuple[str, ...] = ("key", "rank", "name", *RANKS, "scientific_name", "common_name")
HIGHER_RANKS: tuple[str, ...] = ("family", "order", "class")  # texts for photos labelled only that far

_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")
_SKIP = frozenset({"cf", "cf.", "aff", "aff.", "x", "×", "nr", "nr.", "?", "s.l.", "s.s.", "s.str."})
_NOT_EPITHET = frozenset({"sp", "sp.", "spp", "spp.", "indet", "indet.", "sp.nov.", "gen", "gen."})
_BRACKETS = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")


def _plain(value: object) -> str | None:
    """NFKC, no replacement characters, collapsed whitespace; blanks and NaN become None."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = unicodedata.normalize("NFKC", str(value)).replace("\ufffd", " ").replace("_", " ")
    text = " ".join(text.split()).strip(" '\"“”‘’`")
    return text or None


def clean_name(value: object) -> str | None:
    """The bare ``Genus`` or ``Genus epithet`` of a scientific name, or None if it is not one.

    ``Puma concolor (Linnaeus, 1771)`` → ``Puma concolor``; ``Quercus sp.`` → ``Quercus``;
    ``Mentha × piperita L.`` → ``Mentha piperita``; ``PUMA CONCOLOR`` → ``Puma concolor``.
    """
    text = _plain(value)
    if not text:
        return None
    while _BRACKETS.search(text):
        text = _BRACKETS.sub(" ", text)
    if text.isupper():
        text = text.lower()
    tokens = text.replace(",", " ").split()
    while tokens and tokens[0].lower() in _SKIP:
        tokens.pop(0)
    if not tokens or not _WORD.fullmatch(tokens[0].rstrip(".")) or tokens[0].endswith("."):
        return None
    genus = tokens[0]
    genus = genus[0].upper() + genus[1:].lower()
    for token in tokens[1:]:
        low = token.lower()
        if low in _SKIP:
            continue
        if low in _NOT_EPITHET or not token[0].islower() or not _WORD.fullmatch(token.rstrip(".")):
            break  # authorship ("Linnaeus", "L."), a year, or "sp."
        if token.endswith("."):
            break  # an abbreviated author in lower case ("de", "van") or "var."
        return f"{genus} {low}"
    return genus


def _rank_value(value: object) -> str | None:
    """A rank name: its first word if that is alphabetic (``Felidae Gray, 1821`` → ``Felidae``)."""
    text = _plain(value)
    if not text:
        return None
    first = text.split()[0]
    if not _WORD.fullmatch(first):
        return None
    return first[0].upper() + first[1:]


def query_key(rank: str, name: str, lineage: Mapping[str, str | None]) -> str:
    """A stable key for one query: rank, name and the lineage above the genus."""
    return "|".join([rank, name, *((lineage.get(r) or "") for r in LINEAGE)])


def taxon_query(row: Mapping, problems: Counter | None = None) -> dict | None:
    """The query for one taxon row (ranks, ``scientific_name``, ``common_name``), or None.

    Species rows give a ``species`` query for the binomial, rows labelled to genus a ``genus``
    query, rows whose ``rank`` says family, order or class a query at that rank; other rows are
    counted as ``no_genus`` and give None.
    """
    problems = problems if problems is not None else Counter()
    lineage = {r: _rank_value(row.get(r)) for r in LINEAGE}
    for r in LINEAGE:
        if row.get(r) not in (None, "") and lineage[r] is None:
            problems["odd_rank_value"] += 1
    if row.get("rank") in HIGHER_RANKS:
        return _higher_query(row, lineage, problems)
    raw_sci = _plain(row.get("scientific_name"))
    sci = clean_name(raw_sci)
    if raw_sci and sci is None:
        problems["bad_name"] += 1
    elif raw_sci and sci != raw_sci:
        problems["name_cleaned"] += 1

    genus = clean_name(row.get("genus"))
    genus = genus.split()[0] if genus else None
    epithet = None
    raw_species = _plain(row.get("species"))
    if raw_species:
        parts = raw_species.split()
        if genus and parts[0].lower() == genus.lower() and len(parts) > 1:
            raw_species = " ".join(parts[1:])  # a binomial given in the epithet column
        combined = clean_name(f"{genus or 'X'} {raw_species}")
        if combined and " " in combined:
            epithet = combined.split()[1]
            if raw_species != epithet:
                problems["name_cleaned"] += 1
        else:
            problems["bad_name"] += 1
    if sci and " " in sci:
        sci_genus, sci_epithet = sci.split()
        if genus is None:
            genus = sci_genus
        if epithet is None and genus == sci_genus:
            epithet = sci_epithet
    elif sci and genus is None and not any(lineage.values()):
        genus = sci
    if genus and any(lineage.values()) and not all(lineage.values()):
        problems["missing_ranks"] += 1
    if not genus:
        problems["no_genus"] += 1
        return None
    rank, name = ("species", f"{genus} {epithet}") if epithet else ("genus", genus)
    query = {
        "key": query_key(rank, name, lineage),
        "rank": rank,
        "name": name,
        **lineage,
        "genus": genus,
        "species": epithet,
        "scientific_name": name,
        "common_name": _plain(row.get("common_name")),
    }
    return query


def _higher_query(row: Mapping, lineage: dict, problems: Counter) -> dict | None:
    """A text about a family, order or class (``rank`` given), for photos labelled only that far."""
    rank, name = row["rank"], _rank_value(row.get("scientific_name"))
    if name is None:
        problems["bad_name"] += 1
        return None
    lineage = {**lineage, rank: name}
    return {"key": query_key(rank, name, lineage), "rank": rank, "name": name, **lineage, "genus": None,
            "species": None, "scientific_name": name, "common_name": _plain(row.get("common_name"))}


def genus_query(query: Mapping) -> dict:
    """The genus-level query for a species query (its genus and lineage, no epithet)."""
    lineage = {r: query.get(r) for r in LINEAGE}
    genus = query["genus"]
    return {
        "key": query_key("genus", genus, lineage),
        "rank": "genus",
        "name": genus,
        **lineage,
        "genus": genus,
        "species": None,
        "scientific_name": genus,
        "common_name": None,
    }


def distinct_queries(rows, problems: Counter | None = None) -> list[dict]:
    """One query per distinct key, in first-seen order; the first common name seen wins."""
    problems = problems if problems is not None else Counter()
    seen: dict[str, dict] = {}
    for row in rows:
        query = taxon_query(row, problems)
        if query is None:
            continue
        first = seen.setdefault(query["key"], query)
        if first is not query and not first["common_name"] and query["common_name"]:
            first["common_name"] = query["common_name"]
    return list(seen.values())
