from biocap_ray.data.taxonomy import TEXT_TYPES, Taxon, parse_common_name, parse_taxon_tag

LION = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Mammalia", "order": "Carnivora",
        "family": "Felidae", "genus": "Panthera", "species": "leo", "common_name": "lion"}


def test_full_taxon_text_types():
    t = Taxon.from_mapping(LION)
    assert t.text("sci") == "a photo of Panthera leo."
    assert t.text("com") == "a photo of lion."
    assert t.text("taxon") == "a photo of Animalia Chordata Mammalia Carnivora Felidae Panthera leo."
    assert t.text("sci_com") == "a photo of Panthera leo with common name lion."
    assert t.text("taxon_com") == (
        "a photo of Animalia Chordata Mammalia Carnivora Felidae Panthera leo with common name lion."
    )
    assert t.text("taxonTag") == (
        "a photo of kingdom Animalia phylum Chordata class Mammalia order Carnivora family Felidae "
        "genus Panthera species leo."
    )
    assert set(t.texts()) == set(TEXT_TYPES)


def test_missing_lower_ranks_use_the_lowest_named_rank():
    t = Taxon.from_mapping({**LION, "genus": "", "species": None, "common_name": "cat family"})
    assert t.label_rank == "family"
    assert t.scientific_name == "Felidae"
    assert t.text("sci") == "a photo of Felidae."
    assert t.text("taxon") == "a photo of Animalia Chordata Mammalia Carnivora Felidae."
    assert t.text("taxonTag_com").endswith("family Felidae with common name cat family.")


def test_missing_common_name_falls_back_to_scientific():
    t = Taxon.from_mapping({**LION, "common_name": float("nan")})
    assert t.text("com") == "a photo of Panthera leo."
    assert t.text("sci_com") == "a photo of Panthera leo."


def test_gap_in_the_middle_is_skipped():
    t = Taxon.from_mapping({"kingdom": "Animalia", "order": "Lepidoptera"})
    assert t.text("taxon") == "a photo of Animalia Lepidoptera."
    assert t.label_rank == "order"


def test_binomial_in_the_species_column_and_authorship_strings():
    assert Taxon.from_mapping({"genus": "Puma", "species": "Puma concolor"}).species == "concolor"
    t = Taxon.from_mapping({"scientific_name": "Puma concolor (Linnaeus, 1771)"})
    assert (t.genus, t.species) == ("Puma", "concolor")
    assert Taxon.from_mapping({}).text("sci") == ""


def test_taxon_tag_round_trip_and_common_name_parse():
    t = Taxon.from_mapping({**LION, "family": None})
    ranks = parse_taxon_tag(t.text("taxonTag_com"))
    assert ranks == {k: v for k, v in t.ranks().items() if v}
    assert parse_common_name(t.text("com"), t.text("sci")) == "lion"
    assert parse_common_name("a photo of Panthera leo.", "a photo of Panthera leo.") is None
