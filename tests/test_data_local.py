"""The data layer on local disk through Ray Data: round trips and bad input."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import SAMPLE, bad_images, jpeg_bytes

from biocap_ray.data import readers, writers
from biocap_ray.data.ops import convert, inspect
from biocap_ray.data.taxonomy import Taxon

pytestmark = pytest.mark.usefixtures("ray_local")


def records(uri, cfg, fmt=None) -> dict[str, dict]:
    rows = readers.read_records(uri, cfg, fmt).take_all()
    return {r["uid"]: r for r in rows}


def test_folder_to_shards_round_trip(tmp_path, data_cfg):
    src = records(str(SAMPLE), data_cfg)
    assert len(src) == 97 and not any(r["error"] for r in src.values())
    out = convert(str(SAMPLE), str(tmp_path / "shards"), data_cfg)
    assert out["errors"] == 0 and out["records"] == 97
    # every shard holds samples_per_shard records, the last one the rest (not one file per read task)
    per_shard = [len({n.split(".", 1)[0] for n in tarfile.open(t).getnames()})
                 for t in sorted((tmp_path / "shards").glob("*.tar"))]
    assert sorted(per_shard, reverse=True) == [16] * 6 + [1] and out["files"] == 7
    back = records(str(tmp_path / "shards"), data_cfg)
    assert back.keys() == src.keys()
    for uid, rec in src.items():
        got = back[uid]
        assert got["image"] == rec["image"], uid
        for key in ("kingdom", "class", "genus", "species", "scientific_name", "common_name", "source"):
            assert got[key] == rec[key], (uid, key)
        assert Taxon.from_mapping(got).texts() == Taxon.from_mapping(rec).texts()
    lion = back["panthera_leo_npc1"] if "panthera_leo_npc1" in back else next(iter(back.values()))
    assert lion["origin"].endswith(".tar#" + lion["uid"])


def test_shards_carry_bioclip_text_keys(tmp_path, data_cfg):
    convert(str(SAMPLE), str(tmp_path / "shards"), data_cfg)
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    with tarfile.open(tars[0]) as tf:
        names = tf.getnames()
        key = names[0].split(".", 1)[0]
        members = {n.split(".", 1)[1] for n in names if n.split(".", 1)[0] == key}
        meta = json.loads(tf.extractfile(f"{key}.json").read())
        sci = tf.extractfile(f"{key}.sci.txt").read().decode()
    assert {"jpg", "sci.txt", "com.txt", "taxon.txt", "sci_com.txt", "taxon_com.txt", "taxonTag.txt",
            "taxonTag_com.txt", "json"} <= members
    assert sci == Taxon.from_mapping(meta).text("sci")


def test_parquet_round_trip_and_format_detection(tmp_path, data_cfg):
    convert(str(SAMPLE), str(tmp_path / "shards"), data_cfg)
    convert(str(tmp_path / "shards"), str(tmp_path / "pq"), data_cfg, to="parquet")
    assert readers.detect_format(str(tmp_path / "pq")) == "parquet"
    import pyarrow.parquet as pq

    rows = sorted((pq.read_metadata(p).num_rows for p in (tmp_path / "pq").glob("*.parquet")), reverse=True)
    assert rows == [16] * 6 + [1]
    assert readers.detect_format(str(tmp_path / "shards")) == "webdataset"
    assert readers.detect_format(str(SAMPLE / "metadata.csv")) == "folder"
    a = records(str(tmp_path / "shards"), data_cfg)
    b = records(str(tmp_path / "pq"), data_cfg)
    assert a.keys() == b.keys()
    assert all(a[u]["image"] == b[u]["image"] and a[u]["species"] == b[u]["species"] for u in a)


def _bad_folder(root: Path) -> Path:
    """A folder whose metadata points at hard images, a missing file and a duplicate uid."""
    (root / "images").mkdir(parents=True)
    rows = []
    for name, data in {**bad_images(), "good.jpg": jpeg_bytes()}.items():
        (root / "images" / name).write_bytes(data)
        rows.append({"file": f"images/{name}", "kingdom": "Animalia", "class": "Aves", "genus": "Corvus",
                     "species": "corax", "common_name": "raven"})
    rows.append({"file": "images/good.jpg", "kingdom": "Animalia", "class": "Aves"})  # duplicate uid
    rows.append({"file": "images/missing.jpg", "kingdom": "Plantae"})
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "kingdom", "class", "genus", "species", "common_name"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_bad_inputs_become_error_rows_and_the_rest_flows(tmp_path, data_cfg):
    src = _bad_folder(tmp_path / "bad")
    out = convert(str(src), str(tmp_path / "out"), data_cfg)
    good = records(str(tmp_path / "out"), data_cfg)
    assert set(good) == {"cmyk", "palette", "gray16", "alpha", "good"}
    errors = {r["uid"]: r for r in writers.read_errors(str(tmp_path / "out")).to_pylist()}
    assert out["errors"] == len(errors) == 5
    assert set(errors) == {"truncated", "garbage", "bomb", "good", "missing"}
    assert "decompression bomb" in errors["bomb"]["error"]
    assert "duplicate uid 'good' (first at metadata.csv data row 8)" == errors["good"]["error"]
    assert errors["good"]["origin"] == "metadata.csv data row 9"
    assert "images/missing.jpg" in errors["missing"]["error"]
    tar_members = [n for t in (tmp_path / "out").glob("*.tar") for n in tarfile.open(t).getnames()]
    assert "palette.png" in tar_members and "cmyk.jpg" in tar_members  # bytes kept, key matches format


def test_inspect_reports_errors_ranks_classes_and_sizes(tmp_path, data_cfg):
    s = inspect(str(_bad_folder(tmp_path / "bad")), data_cfg)
    assert (s.records, s.ok, s.errors) == (10, 5, 5)
    assert s.error_reasons["decompression bomb"] == 1
    assert s.classes == {"Aves": 5}
    assert s.ranks_present["genus"] == 5 and s.label_ranks == {"species": 5}
    assert s.width["max"] == 64 and s.image_modes["RGB"] >= 1
    assert any(e["origin"] == "metadata.csv data row 5" for e in s.error_examples)
    text = s.render()
    assert "errors           5" in text and "Aves 5" in text


def test_missing_metadata_columns_and_bad_encoding_are_clear_errors(tmp_path, data_cfg):
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "metadata.csv").write_text("img,genus\nimages/a.jpg,Corvus\n")
    with pytest.raises(ValueError, match=r"metadata.csv: missing column 'file'"):
        readers.read_records(str(tmp_path / "m1"), data_cfg)
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "metadata.csv").write_text("file,colour\nimages/a.jpg,red\n")
    with pytest.raises(ValueError, match="no taxonomy columns"):
        readers.read_records(str(tmp_path / "m2"), data_cfg)
    (tmp_path / "m3").mkdir()
    (tmp_path / "m3" / "metadata.csv").write_bytes(b"file,genus\nimages/a.jpg,Corv\xffus\n")
    with pytest.raises(ValueError, match="metadata.csv: cannot parse metadata"):
        readers.read_records(str(tmp_path / "m3"), data_cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: cannot tell the dataset format"):
        readers.detect_format(str(tmp_path / "empty"))


def _write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_tol_shards_unknown_keys_and_duplicate_uids(tmp_path, data_cfg):
    src = tmp_path / "tol"
    src.mkdir()
    tag = b"a photo of kingdom Animalia phylum Chordata class Aves genus Corvus species corax."
    _write_tar(src / "shard-000000.tar", [
        {"__key__": "a", "jpg": jpeg_bytes(), "taxonTag.txt": tag, "sci.txt": b"a photo of Corvus corax.",
         "com.txt": b"a photo of common raven."},
        {"__key__": "b", "jpg": jpeg_bytes(), "sci.txt": b"a photo of Corvus corax.", "weird.bin": b"?"},
        {"__key__": "c", "sci.txt": b"a photo of Corvus corax."},
    ])
    _write_tar(src / "shard-000001.tar", [{"__key__": "a", "jpg": jpeg_bytes((1, 2, 3))}])
    rows = readers.read_records(str(src), data_cfg).take_all()
    recs = {r["uid"]: r for r in rows if "shard-000000" in r["origin"]}
    a = recs["a"]
    assert (a["kingdom"], a["class"], a["genus"], a["species"], a["common_name"]) == (
        "Animalia", "Aves", "Corvus", "corax", "common raven")
    assert "unknown key(s) 'weird.bin'" in recs["b"]["error"]
    assert "no image" in recs["c"]["error"]
    out = convert(str(src), str(tmp_path / "out"), data_cfg)
    errors = {(r["uid"], r["origin"].rsplit("/", 1)[-1]): r["error"]
              for r in writers.read_errors(str(tmp_path / "out")).to_pylist()}
    assert out["errors"] == 3
    assert "first at" in errors[("a", "shard-000001.tar#a")]
    assert set(records(str(tmp_path / "out"), data_cfg)) == {"a"}


def test_existing_destination_needs_overwrite(tmp_path, data_cfg):
    small = tmp_path / "small"
    _bad_folder(small)
    convert(str(small), str(tmp_path / "out"), data_cfg)
    with pytest.raises(Exception, match="(?i)exist"):
        convert(str(small), str(tmp_path / "out"), data_cfg)
    convert(str(small), str(tmp_path / "out"), data_cfg, overwrite=True)
    assert len(records(str(tmp_path / "out"), data_cfg)) == 5


def test_paced_scheduling_sets_a_floor_on_the_loop_period(monkeypatch):
    """Ray Data's scheduling loop runs the paced dataset's callback at every step, and every step
    lasts at least ``PERIOD``: a backpressured loop cannot spin."""
    import time

    import ray.data

    from biocap_ray.data.pacing import PacedScheduling, paced

    stamps: list[float] = []
    original = PacedScheduling.on_execution_step

    def spy(self, executor):
        original(self, executor)
        stamps.append(time.perf_counter())

    monkeypatch.setattr(PacedScheduling, "on_execution_step", spy)
    ds = paced(ray.data.range(40, override_num_blocks=20).map_batches(lambda b: b, num_cpus=0.25))
    for _ in ds.iter_batches(batch_size=2):
        time.sleep(0.02)  # a slow consumer
    assert len(stamps) >= 5, stamps
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.9 * PacedScheduling.PERIOD, gaps
    assert ray.data.DataContext.get_current().custom_execution_callback_classes == []  # only that dataset


# --- what a hostile dataset cannot do ------------------------------------------------------------


def _write_metadata(path: Path, files: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "uid", "kingdom", "genus", "species"])
        w.writeheader()
        w.writerows({"file": name, "uid": f"r{i}", "kingdom": "Animalia", "genus": "Corvus", "species": "corax"}
                    for i, name in enumerate(files))


def test_metadata_paths_cannot_leave_the_dataset_folder(tmp_path, data_cfg):
    """Absolute paths, URIs, `..` and symlinks out of the folder become error rows naming the row
    and the reason; the file outside is never read into a shard. Paths that stay inside pass."""
    secret = jpeg_bytes((1, 2, 3), size=(33, 17))
    (tmp_path / "secret.jpg").write_bytes(secret)
    root = tmp_path / "data"
    (root / "images" / "sub").mkdir(parents=True)
    (root / "images" / "good.jpg").write_bytes(jpeg_bytes())
    (root / "images" / "sub" / "deep.jpg").write_bytes(jpeg_bytes((9, 9, 9)))
    (root / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "images" / "inner.jpg").symlink_to(root / "images" / "good.jpg")  # a link that stays inside
    (tmp_path / "data2").mkdir()  # a sibling whose name starts like the dataset's
    (tmp_path / "data2" / "x.jpg").write_bytes(secret)
    (root / "images" / "outdir").symlink_to(tmp_path / "data2", target_is_directory=True)
    files = ["../secret.jpg", str(tmp_path / "secret.jpg"), "images/link.jpg", "images/../../secret.jpg",
             "file:///etc/hostname", "images/good.jpg", "images/sub/../sub/deep.jpg", "images/inner.jpg",
             "../data2/x.jpg", "images/outdir/x.jpg", "C:\\Windows\\win.ini"]
    _write_metadata(root / "metadata.csv", files)
    rows = records(str(root), data_cfg)
    errors = {uid: r["error"] for uid, r in rows.items() if r["error"]}
    assert errors == {
        "r0": "field 'file' '../secret.jpg' leaves the dataset's folder",
        "r1": f"field 'file' '{tmp_path / 'secret.jpg'}' is an absolute path; paths are relative to the metadata file",
        "r2": "field 'file' 'images/link.jpg' is a symlink out of the dataset's folder",
        "r3": "field 'file' 'images/../../secret.jpg' leaves the dataset's folder",
        "r4": "field 'file' 'file:///etc/hostname' is an absolute path; paths are relative to the metadata file",
        "r8": "field 'file' '../data2/x.jpg' leaves the dataset's folder",
        "r9": "field 'file' 'images/outdir/x.jpg' is a symlink out of the dataset's folder",
        "r10": "field 'file' 'C:\\\\Windows\\\\win.ini' is an absolute path; paths are relative to the metadata file",
    }
    assert rows["r0"]["origin"] == "metadata.csv data row 1" and rows["r0"]["image"] is None
    assert rows["r9"]["origin"] == "metadata.csv data row 10" and rows["r9"]["image"] is None
    assert {uid for uid, r in rows.items() if r["image"]} == {"r5", "r6", "r7"}
    out = convert(str(root), str(tmp_path / "shards"), data_cfg)
    assert (out["records"], out["errors"]) == (3, 8)
    shards = b"".join(p.read_bytes() for p in (tmp_path / "shards").glob("*.tar"))
    assert secret not in shards


def test_a_metadata_file_over_its_limit_is_refused_naming_it(tmp_path):
    """The driver reads a metadata table whole, so one over the limit is refused, read no further."""
    root = tmp_path / "data"
    root.mkdir()
    _write_metadata(root / "metadata.csv", [f"images/{i}.jpg" for i in range(50)])
    size = (root / "metadata.csv").stat().st_size
    assert readers.read_metadata(str(root / "metadata.csv"), max_bytes=size).num_rows == 50
    with pytest.raises(ValueError, match=rf"metadata.csv: metadata file over the limit of {size - 1:,} bytes"):
        readers.read_metadata(str(root / "metadata.csv"), max_bytes=size - 1)


def test_an_oversized_image_file_member_or_cell_becomes_an_error_row(tmp_path, data_cfg):
    """data.max_image_bytes bounds what one record may bring into memory, in every format."""
    cfg = data_cfg.model_copy(update={"max_image_bytes": 4000})
    small, big = jpeg_bytes(), jpeg_bytes() + b"\0" * 5000
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "images" / "small.jpg").write_bytes(small)
    (root / "images" / "big.jpg").write_bytes(big)
    _write_metadata(root / "metadata.csv", ["images/small.jpg", "images/big.jpg"])
    folder = records(str(root), cfg)
    assert folder["r0"]["error"] is None and folder["r0"]["image"] == small
    assert folder["r1"]["error"] == "image file 'images/big.jpg' is over the limit of 4,000 bytes (data.max_image_bytes)"

    (tmp_path / "tar").mkdir()
    _write_tar(tmp_path / "tar" / "shard-000000.tar", [{"__key__": "s", "jpg": small, "sci.txt": b"Corvus corax"},
                                                       {"__key__": "b", "jpg": big, "sci.txt": b"Corvus corax"}])
    shard = records(str(tmp_path / "tar"), cfg)
    assert shard["s"]["error"] is None and shard["s"]["image"] == small
    assert shard["b"]["error"] == (f"member 'b.jpg' is {len(big):,} bytes, over the limit of 4,000 "
                                   "(data.max_image_bytes)") and shard["b"]["image"] is None

    convert(str(root), str(tmp_path / "parquet"), data_cfg, to="parquet")  # written without the limit
    cells = records(str(tmp_path / "parquet"), cfg)
    assert cells["r0"]["error"] is None
    assert cells["r1"]["error"] == "image is over the limit of 4,000 bytes (data.max_image_bytes)"
    assert cells["r1"]["image"] is None


def test_the_shard_reader_skips_an_oversized_member_without_reading_it_in():
    """Python's allocations while reading a shard stay far below its 8 MB member, which is skipped."""
    import tracemalloc

    from biocap_ray.data.shard_reader import samples

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [("a.jpg", b"x" * 1000), ("a.sci.txt", b"Corvus corax"), ("b.jpg", b"y" * 8_000_000),
                           ("c.jpg", b"z" * 1000)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    stream = io.BytesIO(buf.getvalue())
    tracemalloc.start()
    try:
        got = list(samples(stream, "shard.tar", max_member_bytes=100_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [s["__key__"] for s in got] == ["a", "b", "c"]
    assert got[0]["jpg"] == b"x" * 1000 and got[0]["sci.txt"] == b"Corvus corax" and "__error__" not in got[0]
    assert "jpg" not in got[1] and "over the limit of 100,000" in got[1]["__error__"]
    assert peak < 1_000_000


def test_a_shard_is_read_in_small_blocks(tmp_path, data_cfg, monkeypatch):
    """A read task merges what it reads up to the block size; a shard of photos must arrive as
    several blocks (decoded as it streams), not as one block that one task decodes whole."""
    import ray

    shards = tmp_path / "shards"
    convert(str(SAMPLE), str(shards), data_cfg.model_copy(update={"samples_per_shard": 97}))
    assert len(list(shards.glob("*.tar"))) == 1  # all 97 photos (5 MB) in one shard
    monkeypatch.setattr(readers, "BLOCK_BYTES", 2**20)
    blocks = [ray.get(ref) for ref in readers.read_records(str(shards), data_cfg).to_arrow_refs()]
    largest_photo = max(len(p.read_bytes()) for p in (SAMPLE / "images").iterdir())
    assert sum(b.num_rows for b in blocks) == 97
    assert len(blocks) >= 3
    # a block closes once it passes the size, so it may hold one more of the source's yields
    assert max(b.nbytes for b in blocks) <= 2**20 + data_cfg.batch_size * largest_photo
