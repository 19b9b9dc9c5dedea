"""Find a taxon's English Wikipedia article and take its visual description.

One request asks for the exact title (following redirects); if that page is missing, a
disambiguation page, or its taxobox contradicts the record's lineage, a search request weighs
the top results. Each candidate is scored against the record: taxobox ranks that agree count
for it, any that disagree rule it out (homonyms: a genus name used for a plant and an animal),
and mentions of the record's family, order … in the text count a little.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from biocap_ray.context import wikitext
from biocap_ray.context.extract import visual_sentences
from biocap_ray.context.http import ApiClient
from biocap_ray.context.taxa import LINEAGE

LICENCE = "CC BY-SA 4.0"
PAGE_PARAMS = {
    "action": "query",
    "format": "json",
    "formatversion": "2",
    "prop": "revisions|pageprops|info",
    "rvprop": "ids|content",
    "rvslots": "main",
    "ppprop": "disambiguation",
    "inprop": "url",
    "redirects": "1",
}
_KINGDOM_SYNONYMS = {"metazoa": "animalia", "viridiplantae": "plantae", "archaeplastida": "plantae",
                     "eumycota": "fungi", "chromalveolata": "chromista"}
# Title disambiguators that say which branch a page is about: "Morus (plant)", "Morus (bird)".
_DISAMBIGUATORS = {
    "plant": ("kingdom", "plantae"), "alga": ("kingdom", "plantae"), "fungus": ("kingdom", "fungi"),
    "bird": ("class", "aves"), "fish": ("class", "actinopterygii"), "mammal": ("class", "mammalia"),
    "insect": ("class", "insecta"), "moth": ("order", "lepidoptera"), "butterfly": ("order", "lepidoptera"),
    "beetle": ("order", "coleoptera"), "fly": ("order", "diptera"), "wasp": ("order", "hymenoptera"),
    "spider": ("order", "araneae"), "snail": ("class", "gastropoda"), "gastropod": ("class", "gastropoda"),
    "reptile": ("class", "reptilia"), "frog": ("order", "anura"), "crustacean": ("phylum", "arthropoda"),
    "bivalve": ("class", "bivalvia"), "animal": ("kingdom", "animalia"), "bacterium": ("kingdom", "bacteria"),
}


@dataclass
class Page:
    title: str
    page_id: int | None
    revision_id: int | None
    url: str | None
    wikitext: str
    disambiguation: bool
    redirected: bool = False
    search_rank: int | None = None


def _norm(name: str | None) -> str:
    value = (name or "").strip().lower()
    return _KINGDOM_SYNONYMS.get(value, value)


def _pages(data: Mapping) -> tuple[list[Page], set[str]]:
    """Pages of a ``query`` answer (missing/invalid ones left out) and titles reached by redirect."""
    query = data.get("query") or {}
    redirected = {r.get("to") for r in query.get("redirects") or [] if isinstance(r, dict)}
    pages = []
    for raw in query.get("pages") or []:
        if not isinstance(raw, dict) or raw.get("missing") or raw.get("invalid") or not raw.get("title"):
            continue
        revisions = raw.get("revisions") or [{}]
        revision = revisions[0] if isinstance(revisions[0], dict) else {}
        slots = revision.get("slots") or {}
        content = (slots.get("main") or {}).get("content") if slots else revision.get("content")
        content = content or ""
        pages.append(
            Page(
                title=raw["title"],
                page_id=raw.get("pageid"),
                revision_id=revision.get("revid"),
                url=raw.get("fullurl"),
                wikitext=content,
                disambiguation="disambiguation" in (raw.get("pageprops") or {}) or wikitext.is_disambiguation(content),
                redirected=raw["title"] in redirected,
                search_rank=raw.get("index"),
            )
        )
    pages.sort(key=lambda p: (p.search_rank is None, p.search_rank or 0))
    return pages, redirected


def _names_taxon(page: Page, name: str, box_ranks: Mapping[str, str]) -> bool:
    """Is the page about ``name`` at all: by title, redirect, taxobox, or the bold name in its lead?"""
    title = page.title.lower()
    low = name.lower()
    if title == low or title.startswith(low + " ("):
        return True
    if box_ranks.get("binomial", "").lower() == low:
        return True
    if " " not in name and box_ranks.get("genus", "").lower() == low and "binomial" not in box_ranks:
        return True
    lead = wikitext.sections(page.wikitext)[0][2]
    return bool(re.search(r"'''+\s*" + re.escape(name) + r"\s*'''+", lead, flags=re.I))


def score_page(page: Page, query: Mapping) -> tuple[bool, float]:
    """(acceptable, score) of a page for a query; a contradicting taxobox rank makes it unacceptable."""
    name = query["name"]
    box_ranks = wikitext.taxobox_ranks(wikitext.taxobox(page.wikitext))
    if page.disambiguation or not _names_taxon(page, name, box_ranks):
        return False, 0.0
    score = 0.0
    if page.title.lower() == name.lower():
        score += 2
    for rank in (*LINEAGE, "genus"):
        want = _norm(query.get(rank))
        if not want:
            continue
        have = _norm(box_ranks.get(rank))
        if have:
            if have != want:
                return False, 0.0
            score += 3
        elif re.search(r"\b" + re.escape(query[rank]) + r"\b", page.wikitext):
            score += 1
    if " " in name and box_ranks.get("binomial"):
        if box_ranks["binomial"].lower() != name.lower():
            return False, 0.0
        score += 3
    hint = re.search(r"\(([^)]+)\)\s*$", page.title)
    if hint and hint.group(1).lower() in _DISAMBIGUATORS:
        rank, value = _DISAMBIGUATORS[hint.group(1).lower()]
        if query.get(rank):
            if _norm(query[rank]) != value:
                return False, 0.0
            score += 2
    return True, score


def _lineage_evidence(page: Page, query: Mapping) -> bool:
    """Does anything on the page tie it to the record's lineage above the genus?"""
    box_ranks = wikitext.taxobox_ranks(wikitext.taxobox(page.wikitext))
    return any(
        query.get(r) and (_norm(box_ranks.get(r)) == _norm(query[r]) or query[r] in page.wikitext) for r in LINEAGE
    )


def find_page(client: ApiClient, query: Mapping, search_limit: int = 5) -> tuple[Page | None, str]:
    """The best page for ``query`` and how it was found (``exact``, ``redirect``, ``search``) or why not."""
    name = query["name"]
    exact_pages, _ = _pages(client.get({**PAGE_PARAMS, "titles": name}))
    exact = exact_pages[0] if exact_pages else None
    reason = "missing"
    has_lineage = any(query.get(r) for r in LINEAGE)
    if exact is not None:
        ok, _ = score_page(exact, query)
        if exact.disambiguation:
            reason = "disambiguation"
        elif not ok:
            reason = "taxobox conflict"
        elif " " in name or not has_lineage or _lineage_evidence(exact, query):
            return exact, "redirect" if exact.redirected else "exact"
        else:
            reason = "no lineage evidence"
    search = {**PAGE_PARAMS, "generator": "search", "gsrsearch": name, "gsrlimit": search_limit,
              "gsrnamespace": "0"}
    candidates, _ = _pages(client.get(search))
    best: tuple[float, int, Page] | None = None
    for order, page in enumerate(candidates):
        ok, score = score_page(page, query)
        if ok and (best is None or score > best[0]):
            best = (score, order, page)
    if best is not None and (best[0] > 0 or reason == "missing"):
        return best[2], "search"
    if reason == "no lineage evidence" and exact is not None:
        return exact, "redirect" if exact.redirected else "exact"
    return None, f"not found ({reason}; {len(candidates)} search results, none matching)"


def fetch_context(client: ApiClient, query: Mapping, *, max_chars: int = 600, search_limit: int = 5) -> dict:
    """One context-table row for ``query``: its visual excerpt and provenance, or a ``not_found`` row."""
    row = {k: query.get(k) for k in ("key", "rank", "name", *LINEAGE, "genus", "species",
                                     "scientific_name", "common_name")}
    page, how = find_page(client, query, search_limit=search_limit)
    if page is None:
        return {**row, "status": "not_found", "match": None, "note": how, "source": "wikipedia"}
    section, plain = wikitext.description_section(page.wikitext)
    text = visual_sentences(plain, max_chars=max_chars)
    if not text and section != "lead":
        lead = wikitext.description_section(wikitext.sections(page.wikitext)[0][2])[1]
        text, section = visual_sentences(lead, max_chars=max_chars), "lead"
    status = "ok" if text else ("empty" if not plain.strip() else "no_visual_text")
    return {
        **row,
        "text": text or None,
        "status": status,
        "section": section,
        "match": how,
        "page_title": page.title,
        "page_id": page.page_id,
        "revision_id": page.revision_id,
        "url": page.url or f"https://en.wikipedia.org/wiki/{page.title.replace(' ', '_')}",
        "licence": LICENCE,
        "source": "wikipedia",
    }
