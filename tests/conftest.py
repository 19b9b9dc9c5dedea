"""Shared fixtures: a local Ray sized for 2 cores, a real S3 endpoint (moto server on
127.0.0.1), the shipped sample data, and makers of deliberately bad images."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Ray Train's controller polls its workers every 2 s by default; short CI runs would spend most
# of their time waiting on that. Set before any Ray starts, so every Ray of the session has it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "species-sample"

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server on loopback; the AWS variables point every process at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket per test; returns its ``s3://`` URI."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """Local Ray on 2 CPUs, started after the S3 variables are set so workers inherit them."""
    import ray

    from biocap_ray.runtime import local_options

    if not ray.is_initialized():
        ray.init(**local_options(2), include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def ray_session_dir() -> str:
    """This process's Ray session folder (logs of its workers and actors)."""
    from ray._private.worker import global_worker

    return global_worker.node.get_session_dir_path()


@pytest.fixture
def data_cfg():
    from biocap_ray.config import load_config

    return load_config("local", ["data.samples_per_shard=16", "data.batch_size=8"]).data


def jpeg_bytes(color=(200, 30, 30), size=(64, 48), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="JPEG")
    return out.getvalue()


def bad_images() -> dict[str, bytes]:
    """Images that are hard in different ways; the first four must convert, the rest must fail."""
    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(buf, format="JPEG")
    out["cmyk.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(buf, format="PNG", transparency=0)
    out["palette.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)).save(buf, format="PNG")
    out["gray16.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (10, 200, 10, 128)).save(buf, format="PNG")
    out["alpha.png"] = buf.getvalue()
    good = jpeg_bytes(size=(200, 150))
    out["truncated.jpg"] = good[: len(good) // 2]
    out["garbage.jpg"] = b"this is not an image at all" * 10
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")  # 400 Mpx declared, tiny file
    out["bomb.png"] = buf.getvalue()
    return out


def sample_subset(root: Path, n: int, captions: bool = False, corrupt: int = 0) -> Path:
    """A folder + metadata.csv with the first ``n`` sample images (optionally a unique caption
    each, and ``corrupt`` extra rows whose image file is not an image)."""
    import csv
    import shutil

    if root.exists():
        return root
    (root / "images").mkdir(parents=True)
    rows = list(csv.DictReader(open(SAMPLE / "metadata.csv")))[:n]
    for r in rows:
        shutil.copy(SAMPLE / r["file"], root / r["file"])
    for i in range(corrupt):
        row = dict(rows[i], file=f"images/corrupt_{i}.jpg")
        (root / row["file"]).write_bytes(b"this is not an image at all" * 10)
        rows.append(row)
    if captions:
        for i, r in enumerate(rows):
            r["caption"] = f"A {r['common_name'] or r['scientific_name']} photographed, number {i}."
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root
