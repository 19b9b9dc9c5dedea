"""The Ray Data fetch job (resume, cache, bad input) and the offline import, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from biocap_ray.config import load_config
from biocap_ray.context import ContextLookup
from biocap_ray.context.fetch import build_wikipedia_context
from biocap_ray.context.offline import import_context
from biocap_ray.context.table import read_context

SPECIES_CSV = (
    "kingdom,phylum,class,order,family,genus,species,common_name\n"
    "Animalia,Chordata,Mammalia,Carnivora,Felidae,Puma,concolor (Linnaeus 1771),cougar\n"
    "Animalia,Chordata,Mammalia,Carnivora,Canidae,Vulpes,vulpes,red fox\n"
    "Plantae,Tracheophyta,Magnoliopsida,Rosales,Moraceae,Morus,,mulberries\n"
    "Animalia,Chordata,Aves,Suliformes,Sulidae,Morus,bassanus,northern gannet\n"
    "Animalia,Chordata,Aves,Passeriformes,Fictidae,Nonexistus,fictus,\n"
    "Animalia,Chordata,Aves,Accipitriformes,Accipitridae,,,eagle\n"
    "Animalia,Chordata,Aves,,,Emptyus,blankus,caf\xe9\n"
).encode("latin-1")  # one non-UTF-8 byte


def _cfg(wiki, **extra):
    overrides = [f"context.api_url={wiki.url}", "context.requests_per_second=200", "context.backoff_s=0.01",
                 "context.max_retries=1", "context.batch_size=2", "context.concurrency=2",
                 "ray.num_cpus=2"] + [f"context.{k}={v}" for k, v in extra.items()]
    return load_config("local", overrides)


def test_fetch_job_resumes_and_rerun_fetches_nothing(ray_context, fake_wiki, tmp_path):
    src = tmp_path / "taxa.csv"
    src.write_bytes(SPECIES_CSV)
    dst = str(tmp_path / "ctx")
    cfg = _cfg(fake_wiki)
    fake_wiki.down.add("Vulpes vulpes")  # a server fault: reported, not written, retried next run
    first = build_wikipedia_context(str(src), dst, cfg)
    assert first["taxa"] == 6 and first["skipped_done"] == 0
    assert first["status"]["error"] == 1 and first["errors"][0].startswith("Vulpes vulpes: HTTP 503")
    assert first["problems"]["no_genus"] == 1 and first["problems"]["name_cleaned"] >= 1
    assert first["problems"]["non_utf8_lines"] == 1
    assert first["http"]["retries"] >= 1
    table = read_context(dst)
    rows = {(r["rank"], r["name"], r["kingdom"]): r for r in table.to_pylist()}
    assert rows[("species", "Puma concolor", "Animalia")]["page_title"] == "Cougar"
    assert rows[("genus", "Morus", "Plantae")]["page_title"] == "Morus (plant)"
    assert rows[("species", "Morus bassanus", "Animalia")]["status"] == "not_found"
    assert rows[("genus", "Morus", "Animalia")]["page_title"] == "Morus (bird)"  # genus fallback row
    assert rows[("species", "Emptyus blankus", "Animalia")]["status"] == "empty"
    assert ("species", "Vulpes vulpes", "Animalia") not in rows
    summary = json.loads((tmp_path / "ctx" / "_summary.json").read_text())
    assert summary["status"] == first["status"]

    fake_wiki.down.clear()
    fake_wiki.reset_counts()
    second = build_wikipedia_context(str(src), dst, cfg)
    assert second["skipped_done"] == 5 and second["status"] == {"ok": 1}
    assert {p.get("titles") for p in fake_wiki.requests} == {"Vulpes vulpes"}
    assert read_context(dst).num_rows == table.num_rows + 1
    assert len(set(read_context(dst).column("key").to_pylist())) == read_context(dst).num_rows

    fake_wiki.reset_counts()
    third = build_wikipedia_context(str(src), str(tmp_path / "fresh"), _cfg(fake_wiki, cache_uri=f"{dst}/_cache"))
    assert fake_wiki.requests == [] and third["http"]["requests"] == 0 and third["http"]["cache_hits"] > 0
    assert third["rows_written"] == read_context(dst).num_rows

    lookup = ContextLookup.load(dst)
    gannet = lookup.lookup({"kingdom": "Animalia", "class": "Aves", "family": "Sulidae", "genus": "Morus",
                            "species": "bassanus"})
    assert gannet.text_level == "genus" and "black wing tips" in gannet.text and gannet.examples_level == "class"
    records = ray_context.data.from_arrow(pa.table({
        "uid": ["1", "2"], "kingdom": ["Animalia", "Animalia"], "class": ["Mammalia", "Aves"],
        "family": ["Felidae", "Sulidae"], "genus": ["Puma", "Morus"], "species": ["concolor", "bassanus"]}))
    # as the caption stage's prepare tasks use it: pickled into Ray tasks, one lookup per record
    out = records.map(lambda r: {**r, "context_level": lookup.lookup(r).text_level}, num_cpus=0.25).take_all()
    assert sorted(r["context_level"] for r in out) == ["genus", "species"]


def test_import_real_descriptions(tmp_path):
    src = str(Path(__file__).resolve().parents[2] / "sample_data" / "context" / "wikipedia_species_descriptions.jsonl")
    dst = str(tmp_path / "imported")
    summary = import_context(src, dst, load_config("local"))
    assert summary["rows_written"] == summary["taxa"] > 100
    assert summary["status"]["ok"] > 80 and summary["problems"]["no_genus"] >= 1
    table = read_context(dst)
    redwing = [r for r in table.to_pylist() if r["name"] == "Turdus iliacus"][0]
    assert "red flanks" in redwing["text"] and len(redwing["text"]) <= 600
    assert redwing["page_title"] == "Redwing" and redwing["url"].endswith("/Redwing")
    assert import_context(src, dst, load_config("local"))["skipped_done"] == summary["taxa"]


def test_the_sample_taxa_file_gives_most_texted_photos_a_text_at_their_own_rank(tmp_path):
    """The shipped sample-taxa extracts join the sample photos at the rank each is labelled to."""
    import csv

    root = Path(__file__).resolve().parents[2] / "sample_data"
    dst = str(tmp_path / "imported")
    summary = import_context(str(root / "context" / "wikipedia_sample_taxa.jsonl"), dst, load_config("local"))
    assert summary["taxa"] == 52 and summary["problems"] == {}
    ranks = {r["name"]: r["rank"] for r in read_context(dst).to_pylist()}
    assert ranks["Odonata"] == "order" and ranks["Laridae"] == "family" and ranks["Chilopoda"] == "class"
    lookup = ContextLookup.load(dst)
    photos = {r["file"]: r for r in csv.DictReader((root / "species-sample" / "metadata.csv").open())}
    levels = {f: lookup.lookup(r).text_level for f, r in photos.items()}
    assert levels["images/odonata_npc166.jpg"] == "order" and levels["images/chilopoda_npc160.jpg"] == "class"
    assert levels["images/accipitridae_npc93.jpg"] is None  # no Accipitridae text: no context
    assert levels["images/laridae_npc99.jpg"] is None  # its text says nothing about looks
    mole = lookup.lookup(photos["images/talpidae_npc53.jpg"])
    assert mole.text_level == "family" and mole.url.endswith("/Mole_(animal)") and "fur" in mole.text.lower()
    camel = lookup.lookup(photos["images/camelus_bactrianus_npc16.jpg"])
    assert camel.text_level == "species" and "two humps" in camel.text
    counts = {level: sum(v == level for v in levels.values()) for level in set(levels.values())}
    assert counts["species"] == 31 and sum(n for lv, n in counts.items() if lv) == 42


def test_import_counts_bad_lines(tmp_path):
    src = tmp_path / "desc.jsonl"
    src.write_bytes(b'{"scientific_name": "Aix galericulata (Linnaeus, 1758)", "text": "It has a red bill."}\n'
                    b'not json\n'
                    b'{"scientific_name": "Pica pica", "text": "Black and white plumage with a long tail \xff."}\n'
                    b'{"scientific_name": "", "text": "x"}\n{"scientific_name": "Nix nox", "text": ""}\n')
    summary = import_context(str(src), str(tmp_path / "out"), load_config("local"))
    assert summary["problems"]["malformed_lines"] == 1 and summary["problems"]["non_utf8_lines"] == 1
    assert summary["problems"]["no_genus"] == 1
    assert summary["status"] == {"empty": 1, "ok": 2}
    names = set(read_context(str(tmp_path / "out")).column("name").to_pylist())
    assert names == {"Aix galericulata", "Pica pica", "Nix nox"}
