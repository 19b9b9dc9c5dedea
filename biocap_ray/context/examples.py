"""Caption format examples per taxonomic class, with a fallback chain class → phylum → kingdom → default.

The BioCAP file holds one ``description`` per class with numbered example captions, written
in several styles (``1.The …``, ``1. …``, ``2.`` inline after the previous sentence, blank lines,
non-breaking spaces). A group above class (phylum, kingdom) gets the rows named after it, else
a pool of its classes' examples, so a class without examples still gets ones from relatives.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from importlib import resources

import pyarrow as pa
import pyarrow.parquet as pq

from biocap_ray import storage

EXAMPLES_PER_CLASS = 3
LEVELS: tuple[str, ...] = ("class", "phylum", "kingdom", "default")

DEFAULT_EXAMPLES: tuple[str, ...] = (
    "A Red Fox, Vulpes vulpes, shows a slender body with rusty orange fur, black lower legs and a bushy "
    "white-tipped tail, standing on short grass.",
    "The Common Sunflower, Helianthus annuus, bears a broad flower head with bright yellow ray petals around "
    "a dark brown disc of tightly packed florets.",
    "A Fly Agaric, Amanita muscaria, has a convex scarlet cap dotted with white warty scales above white gills "
    "and a stout white stem with a ring.",
)


def _packaged_path() -> str:
    return str(resources.files("biocap_ray.context") / "format_examples.parquet")


def _tidy(text: str) -> str:
    text = " ".join(text.replace("\xa0", " ").split())
    return text.strip(" -–—•*")


def parse_examples(description: str | None, limit: int | None = EXAMPLES_PER_CLASS) -> list[str]:
    """The example captions in one ``description``: numbering and whitespace removed, in order.

    Markers must count up from 1 (``1.``/``1)``), at the start or after whitespace, so numbers
    inside a caption (``0.5 mm``, ``2-3 cm``) never split it. Unnumbered text is split on blank
    lines, then on single lines.
    """
    if not description or not description.strip():
        return []
    text = description.replace("\r\n", "\n").replace("\xa0", " ")
    starts: list[tuple[int, int]] = []  # (marker start, text start)
    pos, number = 0, 1
    while True:
        pattern = rf"(?:^|(?<=\s)){number}\s*[.):]\s*(?=\D)"
        match = re.compile(pattern).search(text, pos)
        if match is None or (number == 1 and text[: match.start()].strip()):
            break
        starts.append((match.start(), match.end()))
        pos, number = match.end(), number + 1
    if starts:
        bounds = [s for s, _ in starts[1:]] + [len(text)]
        items = [_tidy(text[begin:end]) for (_, begin), end in zip(starts, bounds)]
    else:
        chunks = re.split(r"\n\s*\n", text.strip())
        if len(chunks) == 1:
            chunks = text.strip().split("\n")
        items = [_tidy(c) for c in chunks]
    items = [i for i in items if i]
    return items[:limit] if limit else items


def _key(name: object) -> str | None:
    if name is None:
        return None
    text = " ".join(str(name).split())
    return text.lower() or None


class FormatExamples:
    """Examples by taxon name (class, or a phylum/kingdom row), plus pools for groups above class.

    Plain dicts only, so it pickles cheaply into Ray tasks and looks up in O(1).
    """

    def __init__(
        self,
        by_name: Mapping[str, Iterable[str]],
        hierarchy: Iterable[Mapping] = (),
        default: Iterable[str] = DEFAULT_EXAMPLES,
    ) -> None:
        self.by_name: dict[str, tuple[str, ...]] = {}
        self.names: dict[str, str] = {}  # lower-case key → name as written
        for name, examples in by_name.items():
            key = _key(name)
            kept = tuple(e for e in examples if e)
            if key and kept:
                self.by_name[key] = kept
                self.names[key] = " ".join(str(name).split())
        self.default = tuple(default)
        self.pools: dict[tuple[str, str], tuple[str, ...]] = {}
        self._members: dict[tuple[str, str], set[str]] = {}
        self.add_hierarchy(hierarchy)

    @classmethod
    def from_table(cls, table: pa.Table, hierarchy: Iterable[Mapping] = (), limit: int = EXAMPLES_PER_CLASS):
        """From a table with ``class`` (or ``name``/``taxon``) and ``description`` columns."""
        name_col = next((c for c in ("class", "name", "taxon") if c in table.column_names), None)
        if name_col is None or "description" not in table.column_names:
            raise ValueError(
                f"format examples need columns 'class' and 'description'; found {', '.join(table.column_names)}"
            )
        by_name: dict[str, list[str]] = {}
        for name, description in zip(table.column(name_col).to_pylist(), table.column("description").to_pylist()):
            parsed = parse_examples(description, limit=None)
            if name and parsed:
                merged = by_name.setdefault(str(name), [])
                merged.extend(p for p in parsed if p not in merged)
        return cls({k: v[:limit] for k, v in by_name.items()}, hierarchy=hierarchy)

    @classmethod
    def load(cls, uri: str | None = None, hierarchy: Iterable[Mapping] = ()) -> FormatExamples:
        """Read a Parquet file (local or s3://); None reads the file shipped with the package."""
        if uri is None:
            table = pq.read_table(_packaged_path())
        else:
            fs, path = storage.resolve(uri)
            table = pq.read_table(path, filesystem=fs)
        return cls.from_table(table, hierarchy=hierarchy)

    def add_hierarchy(self, taxa: Iterable[Mapping]) -> None:
        """Pool class examples into their phylum and kingdom, using (kingdom, phylum, class) rows."""
        members: dict[tuple[str, str], set[str]] = defaultdict(set)
        for row in taxa:
            cls_key = _key(row.get("class") or row.get("class_"))
            if not cls_key or cls_key not in self.by_name:
                continue
            for level in ("phylum", "kingdom"):
                group = _key(row.get(level))
                if group:
                    members[(level, group)].add(cls_key)
        for group, classes in members.items():
            self._members.setdefault(group, set()).update(classes)
            self.pools[group] = self._pool(sorted(self._members[group]))

    def with_hierarchy(self, taxa: Iterable[Mapping]) -> FormatExamples:
        """A copy that also knows the (kingdom, phylum, class) rows of ``taxa``."""
        clone = copy.deepcopy(self)
        clone.add_hierarchy(taxa)
        return clone

    def _pool(self, classes: list[str]) -> tuple[str, ...]:
        """Round-robin over the classes (by name) so a pool mixes several classes' styles."""
        pool: list[str] = []
        depth = 0
        while len(pool) < EXAMPLES_PER_CLASS:
            added = False
            for cls_key in classes:
                examples = self.by_name[cls_key]
                if depth < len(examples):
                    pool.append(examples[depth])
                    added = True
                    if len(pool) == EXAMPLES_PER_CLASS:
                        break
            if not added:
                break
            depth += 1
        return tuple(pool)

    def for_taxon(
        self, kingdom: str | None = None, phylum: str | None = None, class_: str | None = None
    ) -> tuple[tuple[str, ...], str, str | None]:
        """(examples, level, name the examples are for): level is class, phylum, kingdom or default."""
        for level, name in (("class", class_), ("phylum", phylum), ("kingdom", kingdom)):
            key = _key(name)
            if not key:
                continue
            if key in self.by_name:
                return self.by_name[key], level, self.names[key]
            if level != "class" and (level, key) in self.pools:
                return self.pools[(level, key)], level, " ".join(str(name).split())
        return self.default, "default", None

    def has_class(self, name: str | None) -> bool:
        key = _key(name)
        return bool(key) and key in self.by_name

    def coverage(self, taxa: Iterable[Mapping]) -> dict:
        """Which classes of ``taxa`` have examples of their own, and where the others fall back to."""
        rows = list(taxa)
        probe = self.with_hierarchy(rows)
        classes: dict[str, dict] = {}
        no_class = 0
        for row in rows:
            cls_name = row.get("class") or row.get("class_")
            if not cls_name:
                no_class += 1
                continue
            entry = classes.setdefault(
                " ".join(str(cls_name).split()),
                {"kingdom": row.get("kingdom"), "phylum": row.get("phylum"), "taxa": 0},
            )
            entry["taxa"] += 1
        missing = []
        for name, entry in sorted(classes.items()):
            if probe.has_class(name):
                continue
            _, level, source = probe.for_taxon(entry["kingdom"], entry["phylum"], name)
            missing.append({"class": name, **entry, "fallback": level, "fallback_from": source})
        return {
            "classes": len(classes),
            "classes_with_examples": len(classes) - len(missing),
            "classes_without_examples": missing,
            "taxa_without_class": no_class,
            "example_classes_available": len(probe.by_name),
        }


def examples_report(src: str | None, cfg, src_format: str | None = None) -> dict:
    """Which classes of ``src`` have format examples of their own, and what the others fall back to."""
    examples = FormatExamples.load(cfg.context.format_examples_uri)
    if src is None:
        return {"example_classes_available": len(examples.by_name)}
    from biocap_ray.context.inputs import read_taxa

    rows, _, problems = read_taxa(src, cfg, src_format)
    report = examples.coverage(rows)
    report["problems"] = dict(sorted(problems.items()))
    return report
