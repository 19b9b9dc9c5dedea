"""What the context needs from wikitext: taxobox parameters, sections, and prose as plain text.

Works on the page source (``revisions`` content) so that one API request gives the taxobox,
the sections and the revision id together, on any MediaWiki mirror (TextExtracts not needed).
``mwparserfromhell`` parses; this module knows which templates carry prose (``convert``,
``lang``, ``nowrap``, …; the rest are dropped), which links are not prose (files, categories,
other languages) and what a taxobox calls each rank.
"""

from __future__ import annotations

import html
import re

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode

TAXOBOXES = frozenset(
    {"speciesbox", "taxobox", "automatic taxobox", "subspeciesbox", "infraspeciesbox", "hybridbox", "virusbox"}
)
DISAMBIGUATION_TEMPLATES = frozenset(
    {"disambiguation", "disambig", "dab", "disamb", "hndis", "geodis", "set index article", "species latin name "
     "disambiguation", "genus disambiguation", "taxonomy disambiguation", "letter-number combination disambiguation"}
)
RANK_PARAMS: dict[str, tuple[str, ...]] = {
    "kingdom": ("regnum", "kingdom"),
    "phylum": ("phylum", "divisio", "division"),
    "class": ("classis", "class"),
    "order": ("ordo", "order"),
    "family": ("familia", "family"),
    "genus": ("genus",),
}
DESCRIPTION_TITLE = re.compile(
    r"descri|morpholog|appearance|identif|characteristic|features|physical|anatomy|plumage", re.I
)
_RANGE_WORDS = {"-", "–", "—", "to", "and", "or", "x", "×", "by", "+/-", "±"}
_KEEP_LAST = frozenset({"lang", "lang-la", "transl", "transliteration", "nowrap", "nobr", "small", "smaller",
                        "big", "em", "strong", "smallcaps", "sc", "noitalic", "nobold", "var", "abbr",
                        "nowiki", "linktext", "vernacular", "common name"})
_KEEP_FIRST = frozenset({"taxlink", "taxon link", "abbr", "sic", "sp", "genus", "species", "visible anchor",
                         "anchor text", "plainlist", "ubl", "unbulleted list", "hlist"}) - _KEEP_LAST
_SYMBOLS = {"ndash": "–", "snd": " – ", "spaced ndash": " – ", "mdash": "—", "spaced en dash": " – ",
            "nbsp": " ", "-": "", "'": "'", "=": "=", "!": "|", "·": " · ", "dot": " · ", "x": "×"}


# tags whose contents are not prose: footnotes, galleries, formulas, scores, code, tables
_DROPPED_TAGS = frozenset({"ref", "references", "gallery", "math", "chem", "score", "timeline", "syntaxhighlight",
                           "source", "imagemap", "table", "graph", "templatedata", "categorytree", "inputbox"})


def _name(template: Template) -> str:
    return " ".join(str(template.name).replace("_", " ").split()).lower()


def _params(template: Template) -> tuple[dict[str, str], list[str]]:
    """(named, positional) parameter values as raw wikitext, names lower-cased."""
    named, positional = {}, []
    for param in template.params:
        if param.showkey:
            named[" ".join(str(param.name).split()).lower()] = str(param.value).strip()
        else:
            positional.append(str(param.value).strip())
    return named, positional


def _render_template(template: Template) -> str:
    """The prose a template stands for (as wikitext), or '' for the many that are not prose."""
    base = _name(template).split(":", 1)[-1].strip()
    _, positional = _params(template)
    if base in _SYMBOLS:
        return _SYMBOLS[base]
    if base in ("convert", "cvt") and positional:
        values = [p for p in positional if p]
        if len(values) >= 3 and values[1] in _RANGE_WORDS:
            dash = "–" if values[1] in ("-", "–", "—") else f" {values[1]} "
            return f"{values[0]}{dash}{values[2]} {values[3] if len(values) > 3 else ''}".strip()
        return " ".join(values[:2])
    if base in ("frac", "fraction") and positional:
        return "/".join(positional[:2]) if len(positional) > 1 else f"1/{positional[0]}"
    if base in _KEEP_LAST or base.startswith("lang-"):
        return positional[-1] if positional else ""
    if base in _KEEP_FIRST:
        return positional[0] if positional else ""
    return ""


def _is_prose_link(link: Wikilink) -> bool:
    target = str(link.title)
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    # files, categories and interlanguage links are not prose
    return not (prefix in ("file", "image", "category", "media") or re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", prefix))


def _prose(code: Wikicode) -> str:
    """The text of parsed wikitext: prose templates rendered, links as their labels, markup dropped."""
    out = []
    for node in code.nodes:
        if isinstance(node, Text):
            out.append(str(node))
        elif isinstance(node, Template):
            out.append(_prose(mwparserfromhell.parse(_render_template(node))))
        elif isinstance(node, Wikilink):
            if _is_prose_link(node):
                out.append(_prose(node.text) if node.text is not None else str(node.title).split("#", 1)[0])
        elif isinstance(node, ExternalLink):
            out.append((_prose(node.title) if node.title is not None else "") if node.brackets else str(node.url))
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag == "br":
                out.append(" ")
            elif tag not in _DROPPED_TAGS and node.contents is not None:
                out.append(_prose(node.contents))
        elif isinstance(node, Heading):
            out.append(_prose(node.title))
        # comments, template arguments and the rest are not prose
    return "".join(out)


def to_plain(wikitext: str | None) -> str:
    """Plain prose of a piece of wikitext; paragraphs separated by blank lines."""
    if not wikitext:
        return ""
    text = _prose(mwparserfromhell.parse(wikitext))
    text = re.sub(r"'{2,}", "", text)  # unbalanced bold/italic marks the parser leaves as text
    text = html.unescape(text).replace("\xa0", " ")
    paragraphs, current = [], []
    for line in text.split("\n"):
        line = line.strip()
        if re.fullmatch(r"__[A-Z]+__", line) or line.startswith(("|", "!", "{|")):
            continue
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _top_templates(wikitext: str | None) -> list[Template]:
    return mwparserfromhell.parse(wikitext or "").filter_templates(recursive=False)


def taxobox(wikitext: str | None) -> dict[str, str]:
    """Parameters of the page's first taxobox (lower-case keys, plain values); {} if it has none."""
    for template in _top_templates(wikitext):
        if _name(template) in TAXOBOXES:
            named, _ = _params(template)
            values = {k: taxon_value(v) for k, v in named.items()}
            values["_template"] = _name(template)
            return values
    return {}


def taxon_value(raw: str) -> str:
    """A taxobox value as a bare name: links, italics, daggers and ``(bird)`` disambiguators removed."""
    plain = to_plain(raw)
    plain = plain.replace("†", "").replace("?", "")
    plain = re.sub(r"\s*\([^)]*\)", "", plain)
    return " ".join(plain.split())


def taxobox_ranks(box: dict[str, str]) -> dict[str, str]:
    """Ranks the taxobox names, keyed kingdom … genus, plus ``binomial`` when it names a species."""
    ranks: dict[str, str] = {}
    for rank, params in RANK_PARAMS.items():
        for p in params:
            if box.get(p):
                ranks[rank] = box[p].split()[0]
                break
    species = box.get("species")
    binomial = box.get("binomial") or box.get("taxon")
    if box.get("genus") and species and " " not in species:
        binomial = f"{box['genus'].split()[0]} {species}"
    if binomial:
        ranks["binomial"] = " ".join(binomial.split()[:2])
        ranks.setdefault("genus", binomial.split()[0])
    return ranks


def is_disambiguation(wikitext: str | None) -> bool:
    return any(_name(t) in DISAMBIGUATION_TEMPLATES or "disambiguation" in _name(t) for t in _top_templates(wikitext))


def sections(wikitext: str | None) -> list[tuple[str, int, str]]:
    """(title, level, raw body) in page order; the lead is ("", 0, …). A body includes its
    subsections' text but not their titles."""
    code = mwparserfromhell.parse(wikitext or "")
    result: list[tuple[str, int, str]] = []
    for section in code.get_sections(include_lead=True, flat=False):
        head = section.nodes[0] if section.nodes else None
        if not isinstance(head, Heading):
            result.append(("", 0, str(section)))
            continue
        body = "".join(str(n) for n in section.nodes[1:] if not isinstance(n, Heading))
        result.append((to_plain(str(head.title)), head.level, body))
    if not result or result[0][1] != 0:
        result.insert(0, ("", 0, ""))
    return result


def description_section(wikitext: str | None) -> tuple[str, str]:
    """(section title, plain text): the first Description-like section with prose, else the lead."""
    parts = sections(wikitext)
    for title, level, body in parts[1:]:
        if DESCRIPTION_TITLE.search(title):
            plain = to_plain(body)
            if plain:
                return title, plain
    return "lead", to_plain(parts[0][2])
