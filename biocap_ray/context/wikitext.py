"""Just enough wikitext: taxobox parameters, sections, and markup to plain text.

Works on the page source (``revisions`` content) so that one API request gives the taxobox,
the sections and the revision id together, on any MediaWiki mirror (TextExtracts not needed).
Templates are dropped except a few that carry prose (``convert``, ``lang``, ``nowrap``, …).
"""

from __future__ import annotations

import html
import re

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


def _scan(text: str, open_: str, close: str, start: int) -> int:
    """Index just past the ``close`` that balances the ``open_`` at ``start`` (or len(text))."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif text.startswith(close, i):
            depth -= 1
            i += len(close)
            if depth == 0:
                return i
        else:
            i += 1
    return len(text)


def split_params(body: str) -> list[str]:
    """Split a template body on ``|`` that are not inside nested templates or links."""
    parts, depth_t, depth_l, current = [], 0, 0, []
    i = 0
    while i < len(body):
        two = body[i : i + 2]
        if two in ("{{", "}}", "[[", "]]"):
            depth_t += 1 if two == "{{" else -1 if two == "}}" else 0
            depth_l += 1 if two == "[[" else -1 if two == "]]" else 0
            current.append(two)
            i += 2
            continue
        if body[i] == "|" and depth_t <= 0 and depth_l <= 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(body[i])
        i += 1
    parts.append("".join(current))
    return parts


def templates(text: str) -> list[tuple[str, list[str], int, int]]:
    """Top-level templates as (lower-case name, raw params, start, end)."""
    found, i = [], 0
    while True:
        i = text.find("{{", i)
        if i < 0:
            return found
        end = _scan(text, "{{", "}}", i)
        parts = split_params(text[i + 2 : end - 2])
        name = " ".join(parts[0].replace("_", " ").split()).lower()
        found.append((name, parts[1:], i, end))
        i = end


def _named(params: list[str]) -> tuple[dict[str, str], list[str]]:
    named, positional = {}, []
    for p in params:
        key, eq, value = p.partition("=")
        if eq and re.fullmatch(r"\s*[\w\s-]+\s*", key):
            named[" ".join(key.split()).lower()] = value.strip()
        else:
            positional.append(p.strip())
    return named, positional


def _render_template(name: str, params: list[str]) -> str:
    """The prose a template stands for, or '' for the many that are not prose."""
    base = name.split(":", 1)[-1].strip()
    named, positional = _named(params)
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


def _replace_templates(text: str) -> str:
    out, last = [], 0
    for name, params, start, end in templates(text):
        out.append(text[last:start])
        rendered = _render_template(name, params)
        out.append(_replace_templates(rendered) if "{{" in rendered else rendered)
        last = end
    out.append(text[last:])
    return "".join(out)


def _replace_links(text: str) -> str:
    out, i = [], 0
    while True:
        j = text.find("[[", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        end = _scan(text, "[[", "]]", j)
        inner = text[j + 2 : end - 2]
        target, _, label = inner.partition("|")
        prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
        if prefix in ("file", "image", "category", "media") or re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", prefix):
            pass  # files, categories and interlanguage links are not prose
        else:
            shown = label if label else target.split("#", 1)[0]
            out.append(_replace_links(shown) if "[[" in shown else shown)
        i = end


def _drop_tables(text: str) -> str:
    out, i = [], 0
    while True:
        j = text.find("{|", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        i = _scan(text, "{|", "|}", j)


def to_plain(wikitext: str | None) -> str:
    """Plain prose of a piece of wikitext; paragraphs separated by blank lines."""
    if not wikitext:
        return ""
    text = re.sub(r"<!--.*?(?:-->|$)", "", wikitext, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text, flags=re.I)
    text = re.sub(r"<ref[^>]*>.*?</ref\s*>", "", text, flags=re.I | re.S)
    text = re.sub(r"<(gallery|math|score|timeline|syntaxhighlight|imagemap)[^>]*>.*?</\1\s*>", "", text,
                  flags=re.I | re.S)
    text = _replace_templates(text)
    text = _drop_tables(text)
    text = _replace_links(text)
    text = re.sub(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"</?[a-zA-Z][^>]*>", "", text)
    text = html.unescape(text).replace("\xa0", " ")
    paragraphs, current = [], []
    for line in text.split("\n"):
        line = line.strip()
        if re.fullmatch(r"__[A-Z]+__", line) or line.startswith(("|", "!")):
            continue
        if re.match(r"[*#:;]+", line):
            line = re.sub(r"^[*#:;]+\s*", "", line)
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def taxobox(wikitext: str | None) -> dict[str, str]:
    """Parameters of the page's first taxobox (lower-case keys, plain values); {} if it has none."""
    for name, params, _, _ in templates(wikitext or ""):
        if name in TAXOBOXES:
            named, _ = _named(params)
            values = {k: taxon_value(v) for k, v in named.items()}
            values["_template"] = name
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
    for name, _, _, _ in templates(wikitext or ""):
        if name in DISAMBIGUATION_TEMPLATES or "disambiguation" in name:
            return True
    return False


def sections(wikitext: str | None) -> list[tuple[str, int, str]]:
    """(title, level, raw body) in page order; the lead is ("", 0, …). A body includes its subsections."""
    text = wikitext or ""
    heads = list(re.finditer(r"^(={2,6})\s*(.+?)\s*\1\s*$", text, flags=re.M))
    result = [("", 0, text[: heads[0].start()] if heads else text)]
    for n, head in enumerate(heads):
        level = len(head.group(1))
        end = len(text)
        for later in heads[n + 1 :]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        body = text[head.end() : end]
        body = re.sub(r"^(={2,6})\s*(.+?)\s*\1\s*$", "", body, flags=re.M)  # subsection titles
        result.append((to_plain(head.group(2)), level, body))
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
