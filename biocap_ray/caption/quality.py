"""Quality checks on every caption, recorded as boolean columns (``qc_*``) plus ``qc_pass``.

Checks: empty, too long, refusal or chatter, repetition loops, garbled text (control or
replacement characters, or too few words), the organism's name missing, another taxon's name
present, and text copied from the Wikipedia reference excerpt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

QC_FLAGS = ("qc_empty", "qc_too_long", "qc_chatter", "qc_repetition", "qc_garbled", "qc_missing_name",
            "qc_other_taxon", "qc_copied")

_CHATTER = re.compile(
    r"^\s*(sure|certainly|here is|here's|caption\s*:|this (image|photo|picture) (shows|depicts|is)|"
    r"the (image|photo|picture) (shows|depicts)|in this (image|photo))"
    r"|\b(i cannot|i can't|i can not|i am unable|i'm unable|i'm sorry|as an ai|unable to (identify|determine))\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
# C0/C1 control characters other than tab and newline, and U+FFFD (bytes that were not UTF-8)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")
_PLAIN_WORD = re.compile(r"[(\"']*[A-Za-z][A-Za-z'\-]*[)\"',.;:!?]*")
MIN_WORD_SHARE = 0.6


def printable(text: str | None) -> str:
    """``text`` with control and replacement characters shown as ``·`` (for reports and pages)."""
    return _CONTROL.sub("\u00b7", text or "")


def garbled(text: str) -> bool:
    """Not prose: control or replacement characters, or under 60% of its tokens plain words
    (what a broken or random-weight model emits: subword soup, symbols, other scripts)."""
    if _CONTROL.search(text):
        return True
    tokens = text.split()
    return bool(tokens) and sum(bool(_PLAIN_WORD.fullmatch(t)) for t in tokens) < MIN_WORD_SHARE * len(tokens)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def _repeats(tokens: list[str]) -> bool:
    """A loop: the same 1–3-word unit three times in a row, or very low lexical variety."""
    for n in (1, 2, 3):
        for i in range(len(tokens) - 3 * n + 1):
            unit = tokens[i : i + n]
            if tokens[i + n : i + 2 * n] == unit and tokens[i + 2 * n : i + 3 * n] == unit:
                return True
    return len(tokens) >= 10 and len(set(tokens)) / len(tokens) < 0.4


def copied_fraction(caption: str, reference: str | None, n: int = 4) -> float:
    """Share of the caption's words covered by word ``n``-grams that also occur in the reference."""
    cap, ref = words(caption), words(reference or "")
    if len(cap) < n or len(ref) < n:
        return 0.0
    ref_grams = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
    covered = set()
    for i in range(len(cap) - n + 1):
        if tuple(cap[i : i + n]) in ref_grams:
            covered.update(range(i, i + n))
    return len(covered) / len(cap)


class NameIndex:
    """Lower-cased names of the taxa in a run (binomials, genera, common names), matched by n-grams."""

    def __init__(self, names: Iterable[str]):
        self.names = {" ".join(words(n)) for n in names if n and len(words(n)) >= 1}
        self.names.discard("")
        self.max_len = max((len(n.split()) for n in self.names), default=1)

    def found(self, text: str) -> set[str]:
        tokens = words(text)
        hits = set()
        for n in range(1, self.max_len + 1):
            for i in range(len(tokens) - n + 1):
                gram = " ".join(tokens[i : i + n])
                if gram in self.names:
                    hits.add(gram)
        return hits


@dataclass(frozen=True)
class QualityRules:
    max_words: int = 20
    copy_threshold: float = 0.5


def check(
    caption: str | None,
    own_names: list[str],
    reference: str | None,
    rules: QualityRules,
    index: NameIndex | None = None,
) -> dict[str, bool]:
    """All ``qc_*`` flags for one caption (True means the check failed) and ``qc_pass``."""
    text = (caption or "").strip()
    tokens = words(text)
    own = {" ".join(words(n)) for n in own_names if n}
    lowered = " ".join(tokens)
    name_present = any(f" {n} " in f" {lowered} " for n in own if n)
    others = (index.found(text) if index else set()) - own
    # a genus or family mentioned as part of the organism's own name is not "another taxon"
    others = {o for o in others if not any(o in n.split() or o == n for n in own)}
    flags = {
        "qc_empty": not tokens,
        "qc_too_long": len(text.split()) > rules.max_words,
        "qc_chatter": bool(_CHATTER.search(text)),
        "qc_repetition": _repeats(tokens),
        "qc_garbled": garbled(text),
        "qc_missing_name": bool(own) and not name_present,
        "qc_other_taxon": bool(others),
        "qc_copied": copied_fraction(text, reference) > rules.copy_threshold,
    }
    flags["qc_pass"] = not any(flags.values())
    return flags
