"""Format examples (the shipped BioCAP file), their fallback chain, and the caption-stage lookup."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pyarrow.parquet as pq

from biocap_ray.context import DEFAULT_EXAMPLES, ContextLookup, FormatExamples, parse_examples
from biocap_ray.context.examples import _packaged_path
from biocap_ray.context.table import to_table

SHIPPED = str(_packaged_path())


def test_parse_numbering_styles():
    assert parse_examples("1.The A.  \xa0 \n\n 2.The B, 0.5 mm long. \n3. The C.") == [
        "The A.", "The B, 0.5 mm long.", "The C."]
    assert parse_examples("1. First one. 2. Second one, 2-3 cm.") == ["First one.", "Second one, 2-3 cm."]
    assert parse_examples("One caption.\n\nAnother caption.") == ["One caption.", "Another caption."]
    assert parse_examples(None) == [] and parse_examples("   ") == []
    assert len(parse_examples("1. a\n2. b\n3. c\n4. d")) == 3


def test_packaged_file_parses():
    table = pq.read_table(SHIPPED)
    examples = FormatExamples.load()
    with_text = sum(1 for d in table.column("description").to_pylist() if d and d.strip())
    assert len(examples.by_name) == with_text == 333
    insecta = examples.by_name["insecta"]
    assert len(insecta) == 3
    assert insecta[0].startswith("The Orchid Mantis, Hymenopus coronatus, displays")
    assert insecta[1].startswith("A Rosy Maple Moth") and insecta[2].startswith("The Emerald Ash Borer")
    for captions in examples.by_name.values():
        for caption in captions:
            assert caption == caption.strip() and "\n" not in caption and "\xa0" not in caption
            assert not caption[:2].rstrip(".").isdigit()


def test_fallback_chain_class_phylum_kingdom_default():
    table = pa.table({"class": ["Aves", "Mammalia", "Fungi", "Empty"],
                      "description": ["1. bird one 2. bird two", "1. mammal one", "1. fungus one", None]})
    hierarchy = [{"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves"},
                 {"kingdom": "Animalia", "phylum": "Chordata", "class": "Mammalia"}]
    ex = FormatExamples.from_table(table, hierarchy=hierarchy)
    assert ex.for_taxon("Animalia", "Chordata", "aves") == (("bird one", "bird two"), "class", "Aves")
    got, level, source = ex.for_taxon("Animalia", "Chordata", "Reptilia")
    assert level == "phylum" and source == "Chordata" and got == ("bird one", "mammal one", "bird two")
    assert ex.for_taxon("Animalia", "Arthropoda", "Insecta")[1] == "kingdom"
    assert ex.for_taxon("Fungi", "Basidiomycota", "Agaricomycetes") == (("fungus one",), "kingdom", "Fungi")
    assert ex.for_taxon("Plantae", None, "Empty") == (DEFAULT_EXAMPLES, "default", None)
    report = ex.coverage([{"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves"},
                          {"kingdom": "Animalia", "phylum": "Chordata", "class": "Reptilia"},
                          {"kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida"},
                          {"kingdom": "Plantae"}])
    assert report["classes"] == 3 and report["classes_with_examples"] == 1 and report["taxa_without_class"] == 1
    assert [(m["class"], m["fallback"]) for m in report["classes_without_examples"]] == [
        ("Magnoliopsida", "default"), ("Reptilia", "phylum")]


def _lookup():
    rows = [
        {"key": "a", "rank": "species", "name": "Puma concolor", "kingdom": "Animalia", "genus": "Puma",
         "species": "concolor", "text": "A tawny cat.", "status": "ok", "page_title": "Cougar",
         "url": "https://en.wikipedia.org/wiki/Cougar"},
        {"key": "b", "rank": "genus", "name": "Morus", "kingdom": "Plantae", "family": "Moraceae", "genus": "Morus",
         "text": "Trees with toothed leaves.", "status": "ok", "page_title": "Morus (plant)"},
        {"key": "c", "rank": "genus", "name": "Morus", "kingdom": "Animalia", "family": "Sulidae", "genus": "Morus",
         "text": "White seabirds.", "status": "ok", "page_title": "Morus (bird)"},
        {"key": "d", "rank": "species", "name": "Nix nox", "genus": "Nix", "species": "nox", "status": "not_found"},
    ]
    ex = FormatExamples.from_table(pa.table({"class": ["Mammalia", "Aves"], "description": ["1. m", "1. b"]}))
    return ContextLookup.from_table(to_table(rows), ex)


def test_lookup_levels_and_homonyms():
    lookup = _lookup()
    cougar = lookup.lookup({"kingdom": "Animalia", "class": "Mammalia", "genus": "Puma", "species": "concolor"})
    assert (cougar.text, cougar.text_level, cougar.title) == ("A tawny cat.", "species", "Cougar")
    assert (cougar.examples, cougar.examples_level, cougar.examples_from) == (("m",), "class", "Mammalia")
    by_name = lookup.lookup({"scientific_name": "Puma concolor (Linnaeus, 1771)", "class": "Mammalia"})
    assert by_name.text_level == "species" and by_name.hash == cougar.hash
    plant = lookup.lookup({"kingdom": "Plantae", "family": "Moraceae", "genus": "Morus", "species": "alba"})
    assert (plant.text, plant.text_level) == ("Trees with toothed leaves.", "genus")
    gannet = lookup.lookup({"kingdom": "Animalia", "class": "Aves", "family": "Sulidae", "genus": "Morus",
                            "species": "bassanus"})
    assert gannet.text == "White seabirds." and gannet.examples == ("b",)
    none = lookup.lookup({"kingdom": "Animalia", "class": "Insecta", "genus": "Nix", "species": "nox"})
    assert none.text is None and none.text_level is None and none.examples_level == "default"
    assert len({cougar.hash, plant.hash, gannet.hash, none.hash}) == 4 and len(cougar.hash) == 12


def test_lookup_pickles_for_the_prepare_tasks():
    lookup = pickle.loads(pickle.dumps(_lookup()))
    found = [lookup.lookup(r) for r in ({"uid": "1", "kingdom": "Animalia", "class": "Mammalia", "genus": "Puma",
                                         "species": "concolor"},
                                        {"uid": "2", "kingdom": "Plantae", "class": None, "genus": "Morus"})]
    assert [c.text_level for c in found] == ["species", "genus"]
    assert [c.examples_level for c in found] == ["class", "default"]
