from biocap_ray.caption.quality import NameIndex, QualityRules, check, copied_fraction

RULES = QualityRules(max_words=20, copy_threshold=0.5)
NAMES = ["Panthera leo", "lion"]
INDEX = NameIndex(["Panthera leo", "lion", "Panthera tigris", "tiger", "Canis lupus", "grey wolf"])


def flags(text, reference=None):
    return check(text, NAMES, reference, RULES, INDEX)


def test_a_good_caption_passes():
    f = flags("Panthera leo with a tawny coat and a dark shaggy mane, resting on dry grass.")
    assert f["qc_pass"] and not any(v for k, v in f.items() if k != "qc_pass")


def test_each_failure_is_flagged():
    assert flags("")["qc_empty"]
    assert flags("Panthera leo " + "with a very long tawny coat " * 5)["qc_too_long"]
    assert flags("This image shows Panthera leo lying down.")["qc_chatter"]
    assert flags("I cannot identify Panthera leo here.")["qc_chatter"]
    assert flags("Panthera leo mane mane mane mane.")["qc_repetition"]
    assert flags("Panthera leo tawny coat tawny coat tawny coat.")["qc_repetition"]
    assert flags("A large cat with a tawny coat.")["qc_missing_name"]
    assert flags("Lion with a tawny coat.")["qc_missing_name"] is False  # the common name counts
    other = flags("Panthera leo beside a grey wolf on the plain.")
    assert other["qc_other_taxon"] and not other["qc_pass"]
    assert not flags("Panthera leo, the largest Panthera cat, with a mane.")["qc_other_taxon"]


def test_copied_reference_text():
    ref = "The lion has a muscular deep-chested body with a short rounded head and a hairy tuft at the tail end."
    copied = "Panthera leo has a muscular deep-chested body with a short rounded head."
    assert copied_fraction(copied, ref) > 0.5 and flags(copied, ref)["qc_copied"]
    assert not flags("Panthera leo with a dark mane and tufted tail.", ref)["qc_copied"]


def test_garbled_output_is_its_own_flag_and_prints_safely():
    from biocap_ray.caption.quality import garbled, printable

    # what the tiny random-weight models write: control and replacement characters, subword soup
    for text in ["\ufffdlogis photo photo\x0e\ufffd\x17\x17 t\ufffd", "\x01\ufffd\x01ciInIn",
                 "Panthera leo ##ing 的 @@ 17 ?? ok", "Panthera leo\x07 with a mane."]:
        f = flags(text)
        assert f["qc_garbled"] and not f["qc_pass"], text
    for text in ["Panthera leo (lion): tawny coat, dark mane; resting!", "Panthera leo with DNA-like stripes x2."]:
        assert not garbled(text), text
    assert printable("a\x07b\ufffdc\nd") == "a\u00b7b\u00b7c\nd"
