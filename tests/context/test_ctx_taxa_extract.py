"""Name cleaning, taxon queries and visual-sentence extraction."""

from __future__ import annotations

from collections import Counter

import pytest

from biocap_ray.context.extract import clean_text, split_sentences, visual_sentences
from biocap_ray.context.taxa import clean_name, distinct_queries, taxon_query


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Puma concolor (Linnaeus, 1771)", "Puma concolor"),
        ("Canis lupus Linnaeus, 1758", "Canis lupus"),
        ("Felis catus L.", "Felis catus"),
        ("Quercus sp.", "Quercus"),
        ("Mentha × piperita L.", "Mentha piperita"),
        ("PUMA CONCOLOR", "Puma concolor"),
        ("  Ursus_arctos  ", "Ursus arctos"),
        ("Nymphalis l-album", "Nymphalis l-album"),
        ("cf. Aix galericulata", "Aix galericulata"),
        ("Pica pica\ufffd", "Pica pica"),
        ("123 abc", None),
        ("", None),
        (None, None),
    ],
)
def test_clean_name(raw, clean):
    assert clean_name(raw) == clean


def test_taxon_query_from_ranks_names_and_problems():
    problems = Counter()
    q = taxon_query({"kingdom": "Animalia", "genus": "Puma", "species": "concolor (Linnaeus, 1771)"}, problems)
    assert (q["rank"], q["name"], q["species"]) == ("species", "Puma concolor", "concolor")
    assert problems["name_cleaned"] == 1 and problems["missing_ranks"] == 1
    q = taxon_query({"scientific_name": "Puma concolor (Linnaeus, 1771)"}, problems)
    assert q["name"] == "Puma concolor" and q["genus"] == "Puma"
    q = taxon_query({"genus": "Acinonyx", "species": "Acinonyx jubatus"}, problems)
    assert q["name"] == "Acinonyx jubatus"
    q = taxon_query({"kingdom": "Animalia", "family": "Accipitridae", "scientific_name": "Accipitridae"}, problems)
    assert q is None and problems["no_genus"] == 1
    q = taxon_query({"kingdom": "Plantae", "genus": "Quercus"}, problems)
    assert q["rank"] == "genus" and q["name"] == "Quercus"
    assert taxon_query({"scientific_name": "%%%"}, problems) is None and problems["bad_name"] == 1


def test_distinct_queries_merge_rows_of_one_taxon():
    rows = [{"genus": "Puma", "species": "concolor"}, {"genus": "Puma", "species": "concolor", "common_name": "puma"},
            {"genus": "Puma", "species": "concolor Linnaeus"}]
    queries = distinct_queries(rows)
    assert len(queries) == 1 and queries[0]["common_name"] == "puma"


def test_clean_text_removes_citations_ipa_and_conversions():
    text = "The puma (/ˈpjuːmə/; Puma concolor)[1] is 41–49 cm (16–19 in) long.[citation needed] It is tawny[a]."
    assert clean_text(text) == "The puma is 41–49 cm long. It is tawny."


def test_split_sentences_keeps_abbreviations():
    assert split_sentences("It is c. 5 cm long. A. galericulata is red. Done.") == [
        "It is c. 5 cm long.", "A. galericulata is red.", "Done."]


def test_visual_sentences_keep_appearance_within_budget():
    text = ("The redwing is a thrush native to Europe. It is 20–24 cm long with a wingspan of 33 cm. "
            "It feeds on insects and berries. The sexes are similar, with plain brown backs and dark spots on "
            "white underparts. The name comes from the Latin word for red.")
    got = visual_sentences(text)
    assert got == ("It is 20–24 cm long with a wingspan of 33 cm. The sexes are similar, with plain brown backs "
                   "and dark spots on white underparts.")
    short = visual_sentences(text, max_chars=60)
    assert short == "It is 20–24 cm long with a wingspan of 33 cm." and len(short) <= 60
    cut = visual_sentences("A bird with " + "bright red and black feathers, " * 40 + "and a tail.", max_chars=100)
    assert len(cut) <= 100 and cut.endswith("…")
    assert visual_sentences("It lives in forests and eats seeds.") == ""
    assert visual_sentences("It has black wings and a red crown and yellow...").endswith("yellow…")
