"""The caption job on local Ray with real engines on a tiny random Qwen2-VL: the transformers
engine and vLLM (CPU build) run through the same pipeline code. Captions are gibberish; the
tests check the pipeline: counts, uids, resume, error rows, QC flags and provenance."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE, ray_session_dir

from biocap_ray.caption import outputs
from biocap_ray.caption.merge import merge_captions
from biocap_ray.caption.run import caption
from biocap_ray.config import load_config
from biocap_ray.context.offline import import_context
from biocap_ray.data import readers, writers

pytestmark = pytest.mark.usefixtures("ray_local")

PICK = ["columba_livia_npc91", "phasianus_colchicus_npc112", "bos_taurus_npc19", "panthera_leo_npc2",
        "apteryx_npc103", "carnivora_npc68", "bison_bison_npc15", "canis_lupus_npc81"]


def small_folder(root: Path, uids: list[str], corrupt: bool = True) -> Path:
    """A folder dataset of some sample images, plus one corrupt image."""
    (root / "images").mkdir(parents=True)
    rows = [r for r in csv.DictReader(open(SAMPLE / "metadata.csv")) if Path(r["file"]).stem in uids]
    for r in rows:
        shutil.copy(SAMPLE / r["file"], root / r["file"])
    if corrupt:
        (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        rows.append({**rows[0], "file": "images/broken.jpg", "caption": "an earlier caption, kept"})
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    return root


CONTEXT_ROWS = [
    {"scientific_name": "Columba livia", "common_name": "rock dove",
     "text": "The rock dove has a pale grey body with two black bars on each wing and an iridescent green neck."},
    {"scientific_name": "Canis",
     "text": "Members of the genus have long legs, a bushy tail, a long muzzle and large erect ears."},
]


def context_table(tmp_path: Path) -> Path:
    """A context table built by the real import path: a species entry and a genus entry."""
    ctx = tmp_path / "context"
    if not ctx.exists():
        src = tmp_path / "context.jsonl"
        src.write_text("\n".join(json.dumps(r) for r in CONTEXT_ROWS))
        summary = import_context(str(src), str(ctx), load_config("local"))
        assert summary["status"]["ok"] == 2
    return ctx


def cfg_for(engine: str, tmp_path: Path, *extra: str):
    ctx = context_table(tmp_path)
    return load_config("local", [
        f"caption.engine={engine}", f"caption.context_uri={ctx}", "caption.rows_per_file=3",
        "caption.batch_size=4", "caption.sampling.max_tokens=12", "data.batch_size=4", *extra,
    ])


@pytest.fixture
def dataset(tmp_path):
    present = {p.stem for p in (SAMPLE / "images").iterdir()}
    return small_folder(tmp_path / "data", [u for u in PICK if u in present])


def test_transformers_engine_captions_every_image_once_and_resumes(dataset, tmp_path):
    cfg = cfg_for("transformers", tmp_path)
    dst = str(tmp_path / "captions")
    summary = caption(str(dataset), dst, cfg)
    table = outputs.read_parts(dst).to_pylist()
    uids = [r["uid"] for r in table]
    expected = {p.stem for p in (dataset / "images").iterdir()}
    assert Counter(uids) == Counter(expected)  # every uid exactly once, the corrupt one included
    broken = next(r for r in table if r["uid"] == "broken")
    assert broken["error"].startswith("unreadable image") and broken["caption"] is None
    good = [r for r in table if not r["error"]]
    assert len(good) == len(expected) - 1 == summary["captioned"]
    for r in good:
        assert r["model"] == "builtin:tiny-qwen2-vl" and r["prompt_version"] == "biocap-v1"
        assert r["engine"] == "transformers" and r["input_tokens"] > 20 and 0 < r["output_tokens"] <= 12
        assert r["qc_missing_name"] is not None and r["qc_pass"] in (True, False)
        assert len(r["context_hash"]) == 12 and r["examples_level"] == "class"
    levels = {r["uid"]: r["context_level"] for r in good}
    assert levels["columba_livia_npc91"] == "species" and levels["canis_lupus_npc81"] == "genus"
    assert levels["bos_taurus_npc19"] is None
    assert summary["errors"] == 1 and 0 <= summary["qc_pass_rate"] <= 1
    assert summary["prefix_cache_hit_rate"] is None and all(r["cached_tokens"] is None for r in good)
    # the tiny random model writes garbage, and QC says so
    assert summary["qc_failures"]["qc_garbled"] > 0
    assert summary["qc_failures"]["qc_garbled"] == sum(bool(r["qc_garbled"]) for r in good)
    counts = list(summary["context_levels"].items())  # most first, ties by name, the same every run
    assert counts == sorted(counts, key=lambda kv: (-kv[1], kv[0]))
    assert summary["context_coverage"] == round(sum(v for k, v in summary["context_levels"].items()
                                                    if k != "none") / len(good), 4)
    # the captions page: every good record here (fewer than caption.page_rows), its image inline,
    # its Wikipedia excerpt, format examples, prompt and caption, control characters made visible
    page = (Path(dst) / "captions.html").read_text()
    assert summary["captions_page"].endswith("captions.html")
    assert page.count('<img src="data:image/jpeg;base64,') == len(good) and "broken" not in page
    pigeon = page[page.index("columba_livia_npc91"):]
    pigeon = pigeon[:pigeon.index('<div class="card">') if '<div class="card">' in pigeon else None]
    assert "Wikipedia excerpt (species level)" in pigeon and "format examples (class level)" in pigeon
    assert "the prompt as the engine saw it" in pigeon and "garbled" in page
    assert not any(ch in page for ch in "\x00\x01\x07\ufffd")
    files = sorted(os.listdir(dst))
    again = caption(str(dataset), dst, cfg)
    assert again["this_run_images"] == 0 and sorted(os.listdir(dst)) == files
    assert (Path(dst) / "captions.html").read_text() == page  # the same sample, the same page
    # a run whose taxa miss the context table says so
    strict = caption(str(dataset), dst, cfg_for("transformers", tmp_path, "caption.min_context_coverage=0.9"))
    assert strict["warnings"] and "caption.min_context_coverage=90%" in strict["warnings"][0]
    assert not again["warnings"]


def test_the_published_captioners_family_captions_through_transformers(dataset, tmp_path):
    """A tiny random InternVL3 (the Hugging Face format of the paper's captioner family; vLLM runs it
    in the cluster-preset test): the same pipeline, its own chat template and image tokens."""
    cfg = cfg_for("transformers", tmp_path, "caption.model=builtin:tiny-internvl3")
    summary = caption(str(dataset), str(tmp_path / "captions"), cfg)
    table = outputs.read_parts(str(tmp_path / "captions")).to_pylist()
    assert Counter(r["uid"] for r in table) == Counter(p.stem for p in (dataset / "images").iterdir())
    good = [r for r in table if not r["error"]]
    assert summary["captioned"] == len(good) == len(table) - 1
    assert all(r["model"] == "builtin:tiny-internvl3" and r["input_tokens"] > 20 and r["output_tokens"] >= 1
               for r in good)


def _engine_processes() -> set[int]:
    """vLLM's engine processes under this test session's Ray (not those of another Ray on this machine)."""
    import psutil

    found = set()
    for p in psutil.Process().children(recursive=True):  # Ray's raylet, its workers, their engines
        try:
            if p.name() == "VLLM::EngineCore":
                found.add(p.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def _actor_logs(needle: str) -> int:
    """How often ``needle`` appears in the logs of this Ray session's workers and actors, those
    that exited too: Ray's log monitor moves a dead worker's logs into ``logs/old``, at any time."""
    logs = Path(ray_session_dir()) / "logs"
    names = {p.name for p in logs.glob("worker-*")} | {p.name for p in logs.glob("old/worker-*")}
    count = 0
    for name in names:
        for path in (logs / name, logs / "old" / name):  # moved between listing and reading
            try:
                count += path.read_text(errors="ignore").count(needle)
                break
            except FileNotFoundError:
                continue
    return count


def _alive(class_name: str) -> set[str]:
    """The actors of a class that are alive. For an engine actor: it has started its engine, since
    Ray marks an actor ALIVE only once its ``__init__`` has returned. Read from Ray's actor table
    directly: the public state API (``ray.util.state``) needs the dashboard, which these tests'
    Ray runs without."""
    from ray._private.state import actors

    return {i for i, a in actors(actor_state_name="ALIVE").items() if class_name in a["ActorClassName"]}


def test_vllm_engine_runs_the_same_pipeline_and_survives_its_engine_dying(dataset, tmp_path):
    """Long captions keep the engine busy; 3 s after the engine actor is up, vLLM's engine process is
    killed. The actor starts a new engine and retries the rows: every uid is captioned exactly once.
    (Killed while the actor is still starting it, the engine would be retried as a failed start:
    another path, so the kill waits for the actor to be up.)"""
    cfg = cfg_for("vllm", tmp_path, "caption.batch_size=1", "caption.sampling.max_tokens=1500")
    dst = tmp_path / "captions"
    old, up_before, died_before = _engine_processes(), _alive("VLLMCaptioner"), _actor_logs("engine died")
    killed: list[int] = []
    seen: set[int] = set()
    done = threading.Event()

    def kill_the_engine_midway():
        while not done.wait(0.1):
            seen.update(_engine_processes() - old)
            if not killed and _alive("VLLMCaptioner") - up_before:
                time.sleep(3.0)  # the actor has its first images in the engine by now
                for pid in seen:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    watcher = threading.Thread(target=kill_the_engine_midway, daemon=True)
    watcher.start()
    try:
        summary = caption(str(dataset), str(dst), cfg)
    finally:
        done.set()
        watcher.join()
    assert killed and seen - set(killed), "the engine must be killed midway and then started again"
    assert _actor_logs("engine died") > died_before  # found dead by a generate call, not while starting
    table = outputs.read_parts(str(dst)).to_pylist()
    assert Counter(r["uid"] for r in table) == Counter(p.stem for p in (dataset / "images").iterdir())
    good = [r for r in table if not r["error"]]
    assert all(r["engine"] == "vllm" and r["input_tokens"] > 20 and r["output_tokens"] >= 1 for r in good)
    assert all(r["latency_s"] is not None and r["latency_s"] >= 0 for r in good)
    assert summary["errors"] == 1 and summary["captioned"] == len(good) == len(table) - 1
    # the instructions and a class's format examples come first, so later prompts hit the prefix cache
    assert all(0 <= r["cached_tokens"] < r["input_tokens"] for r in good)
    assert summary["prefix_cache_hit_rate"] > 0.2


def test_an_interrupted_run_leaves_no_ledger_actor_behind(dataset, tmp_path, monkeypatch):
    """Ctrl-C in a notebook once the first captions are in: the run stops, and the actor that
    counted its engines' rows goes with it rather than living on until the driver exits."""
    from biocap_ray.caption import run

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(run._Progress, "update", interrupted)
    before = _alive("Ledger")
    with pytest.raises(KeyboardInterrupt):
        caption(str(dataset), str(tmp_path / "captions"), cfg_for("transformers", tmp_path))
    deadline = time.time() + 20
    while _alive("Ledger") - before and time.time() < deadline:  # ray.kill is asynchronous
        time.sleep(0.2)
    assert not _alive("Ledger") - before


def test_qc_retry_regenerates_failures_and_merge_writes_caption_txt(dataset, tmp_path):
    cfg = cfg_for("transformers", tmp_path, "caption.qc_action=retry", "caption.max_attempts=2")
    dst = str(tmp_path / "captions")
    caption(str(dataset), dst, cfg)
    rows = outputs.read_parts(dst).to_pylist()
    assert Counter(r["uid"] for r in rows) == Counter(p.stem for p in (dataset / "images").iterdir())
    good = [r for r in rows if not r["error"]]
    # gibberish from a random model fails QC, so its captions were generated a second time; a
    # caption that passed on its first attempt stays at attempt 0
    assert any(r["attempt"] == 1 for r in good)
    assert all(r["attempt"] == 1 for r in good if not r["qc_pass"])
    assert all(r["attempt"] == 0 for r in good if r["qc_pass"] and r["attempt"] == 0)

    # merge reads files of records (the ingest's output), here Parquet of 3 records each, unvalidated
    # so that the corrupt image is among them; a folder must be ingested first
    with pytest.raises(ValueError, match="ingest it into shards first"):
        merge_captions(str(dataset), dst, str(tmp_path / "shards"), cfg)
    src = str(tmp_path / "records")
    small = cfg.data.model_copy(update={"samples_per_shard": 3})
    writers.write_parquet(readers.read_records(str(dataset), small), src, small)
    assert len(list((tmp_path / "records").glob("*.parquet"))) > 2
    # a record that came with a caption keeps it when no new one exists (the corrupt image)
    out = merge_captions(src, dst, str(tmp_path / "shards"), cfg)
    recs = {r["uid"]: r for r in readers.read_records(str(tmp_path / "shards"), cfg.data).take_all()}
    assert len(recs) == len(rows) and out["records"] == len(rows) and out["captions_available"] == len(good)
    by_uid = {r["uid"]: r for r in rows}
    assert all(recs[u]["caption"] == by_uid[u]["caption"] for u in recs if u != "broken")
    assert recs["broken"]["caption"] == "an earlier caption, kept"


def test_kill_and_resume_captions_every_uid_exactly_once(tmp_path):
    data = small_folder(tmp_path / "data", sorted(p.stem for p in (SAMPLE / "images").iterdir())[:24], corrupt=False)
    dst = tmp_path / "captions"
    context_table(tmp_path)
    args = [sys.executable, "-m", "biocap_ray.cli", "caption", "run", str(data), str(dst),
            "--set", "caption.engine=transformers", "--set", "caption.rows_per_file=2",
            "--set", "caption.batch_size=2", "--set", "data.batch_size=2",
            "--set", "caption.sampling.max_tokens=24", "--set", f"caption.context_uri={tmp_path / 'context'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(dst.glob("part-*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = outputs.read_parts(str(dst)).num_rows
    assert 0 < before < 24, "the run must be interrupted midway"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    uids = Counter(outputs.read_parts(str(dst)).column("uid").to_pylist())
    assert set(uids) == {p.stem for p in (data / "images").iterdir()} and set(uids.values()) == {1}


def test_a_row_that_fails_alone_becomes_an_error_row_and_its_batch_still_captions(dataset, tmp_path):
    """The engine actor itself, on the real transformers engine: one row's prompt has lost its image
    placeholder, so the processor rejects the whole batch; retried alone, the other rows caption
    and the bad row becomes an error row."""
    import pyarrow as pa

    from biocap_ray.caption.prepare import prepare_batch
    from biocap_ray.caption.run import build_setup, engine_class

    cfg = cfg_for("transformers", tmp_path)
    setup = build_setup(cfg)
    records = pa.Table.from_pylist(readers.read_records(str(dataset), cfg.data).take(3))
    prepared = prepare_batch(records, setup)["prepared"]
    bad = prepared["uid"][1]
    prepared["prompt"][1] = "no image here, so the image and its placeholder disagree"
    out = engine_class("transformers")(setup, cfg.caption)(prepared)
    rows = {u: (c, e) for u, c, e in zip(out["uid"], out["caption"], out["error"])}
    assert list(rows) == prepared["uid"]
    assert rows[bad][0] is None and rows[bad][1].startswith("engine failed: ")
    assert all(e is None and c is not None for u, (c, e) in rows.items() if u != bad)
