"""Synthetic TreeOfLife-style shards for benchmarks: jittered, re-encoded copies of the sample
(random crop, size, colour, brightness, mirror, JPEG quality), generated once and cached."""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from biocap_ray.data.taxonomy import Taxon

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "species-sample"
PER_SHARD = 1000


def _jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    scale = rng.uniform(0.7, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch)).resize((rng.randint(320, 512), rng.randint(240, 512)))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    return ImageOps.mirror(img) if rng.random() < 0.5 else img


def generate(out: Path, n: int) -> list[Path]:
    """Write ``n`` jittered samples as TreeOfLife-style shards (jpg + text types + json)."""
    done = out / f"_done_{n}"
    if done.exists():
        return sorted(out.glob("*.tar"))
    out.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(open(SAMPLE / "metadata.csv")))
    sources = [(Image.open(SAMPLE / r["file"]).convert("RGB"), Taxon.from_mapping(r)) for r in rows]
    rng = random.Random(0)
    for shard in range(0, n, PER_SHARD):
        with tarfile.open(out / f"shard-{shard // PER_SHARD:06d}.tar", "w") as tf:
            for i in range(shard, min(n, shard + PER_SHARD)):
                img, taxon = sources[i % len(sources)]
                buf = io.BytesIO()
                _jitter(img, rng).save(buf, format="JPEG", quality=rng.randint(75, 95))
                members = {"jpg": buf.getvalue(), "json": json.dumps(taxon.as_dict()).encode()}
                members.update({f"{t}.txt": s.encode() for t, s in taxon.texts().items()})
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"syn{i:07d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        print(f"  generated {min(n, shard + PER_SHARD)}/{n}", flush=True)
    done.touch()
    return sorted(out.glob("*.tar"))


