"""The data layer against a real S3 endpoint (moto server on 127.0.0.1), same code path as AWS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLE

from biocap_ray import storage
from biocap_ray.data import readers
from biocap_ray.data.ops import convert

pytestmark = pytest.mark.usefixtures("ray_local")


def _by_uid(uri, cfg):
    return {r["uid"]: r for r in readers.read_records(uri, cfg).take_all()}


def test_folder_to_shards_on_s3_round_trip(s3_bucket, data_cfg):
    dst = f"{s3_bucket}/tol/shards"
    out = convert(str(SAMPLE), dst, data_cfg)
    assert out["errors"] == 0
    assert storage.list_files(dst, (".tar",))
    local = _by_uid(str(SAMPLE), data_cfg)
    remote = _by_uid(dst, data_cfg)
    assert remote.keys() == local.keys()
    for uid, rec in local.items():
        got = remote[uid]
        assert got["image"] == rec["image"]
        assert [got[k] for k in ("kingdom", "genus", "species", "scientific_name", "common_name")] == [
            rec[k] for k in ("kingdom", "genus", "species", "scientific_name", "common_name")
        ]


def test_folder_on_s3_to_parquet_on_s3(s3_bucket, data_cfg):
    src = f"{s3_bucket}/sample"
    lines = (SAMPLE / "metadata.csv").read_text().splitlines()
    subset = [lines[0], *lines[1:9]]
    storage.write_bytes(f"{src}/metadata.csv", ("\n".join(subset) + "\n").encode())
    for line in subset[1:]:
        rel = line.split(",", 1)[0]
        storage.write_bytes(f"{src}/{rel}", (SAMPLE / rel).read_bytes())
    assert readers.detect_format(src) == "folder"
    convert(src, f"{s3_bucket}/pq", data_cfg, to="parquet")
    back = _by_uid(f"{s3_bucket}/pq", data_cfg)
    assert len(back) == 8
    for uid, rec in back.items():
        assert rec["image"] == (SAMPLE / "images" / f"{uid}.jpg").read_bytes()


def test_metadata_on_s3_cannot_reach_keys_outside_its_prefix(s3_bucket, data_cfg):
    """`..` and absolute keys (another bucket, a URI) are error rows; the key beside the dataset
    is never read. A bucket has no symlinks."""
    good = (SAMPLE / "images").glob("*.jpg").__next__().read_bytes()
    storage.write_bytes(f"{s3_bucket}/private/secret.jpg", good + b"secret")
    storage.write_bytes(f"{s3_bucket}/data/images/good.jpg", good)
    files = ["images/good.jpg", "../private/secret.jpg", "images/../../private/secret.jpg",
             f"{s3_bucket}/private/secret.jpg", "/private/secret.jpg"]
    rows = "\n".join(f"{f},r{i},Animalia,Corvus,corax" for i, f in enumerate(files))
    storage.write_bytes(f"{s3_bucket}/data/metadata.csv", f"file,uid,kingdom,genus,species\n{rows}\n".encode())
    got = _by_uid(f"{s3_bucket}/data", data_cfg)
    assert got["r0"]["error"] is None and got["r0"]["image"] == good
    reasons = {uid: r["error"].rsplit("' ", 1)[1] for uid, r in got.items() if uid != "r0"}
    outside, absolute = "leaves the dataset's folder", "is an absolute path; paths are relative to the metadata file"
    assert reasons == {"r1": outside, "r2": outside, "r3": absolute, "r4": absolute}
    assert not any(r["image"] and r["image"].endswith(b"secret") for r in got.values())


def test_cli_on_s3_never_prints_credentials(s3_bucket):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    secret = env["AWS_SECRET_ACCESS_KEY"]
    ok = subprocess.run(
        [sys.executable, "-m", "biocap_ray.cli", "data", "convert", str(SAMPLE), f"{s3_bucket}/cli",
         "--set", "data.samples_per_shard=50"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert '"errors": 0' in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "biocap_ray.cli", "data", "inspect", "s3://no-such-bucket-here/x"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2
    assert "no-such-bucket-here" in bad.stderr
    for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert secret not in text and env["AWS_ACCESS_KEY_ID"] not in text
