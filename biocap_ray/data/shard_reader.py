"""WebDataset tar shards as a Ray Data source that never loads an oversized member.

Ray's own ``read_webdataset`` reads every tar member whole before anything can look at it, so
one multi-gigabyte member in a hostile or broken shard takes a worker's memory. This source
reads the tar as a stream, checks each member's size in its header and skips (unread) a member
over the limit; its sample then carries an ``__error__`` that the record parser turns into an
error row. Rows have Ray's shape: ``__key__``, ``path`` (the shard) and one bytes column per
member suffix (``jpg``, ``sci.txt``, ...).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

_KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # "dir/abc.sci.txt" -> "dir/abc", "sci.txt"
_TEXT_COLUMNS = ("__key__", "path", "__error__")


class ShardSource(FileBasedDatasource):
    """Samples of WebDataset shards; with ``keys_only`` their keys alone, no member read."""

    _FILE_EXTENSIONS = ["tar"]

    def __init__(self, paths: list[str], max_member_bytes: int, keys_only: bool = False,
                 samples_per_block: int = 256, **kwargs):
        super().__init__(paths, **kwargs)
        self.max_member_bytes = max_member_bytes
        self.keys_only = keys_only
        self.samples_per_block = samples_per_block

    def _read_stream(self, stream, path: str) -> Iterator[pa.Table]:
        rows: list[dict] = []
        for sample in samples(stream, path, self.max_member_bytes, self.keys_only):
            rows.append(sample)
            if len(rows) == self.samples_per_block:
                yield _block(rows)
                rows = []
        if rows:
            yield _block(rows)


def samples(stream, path: str, max_member_bytes: int, keys_only: bool = False) -> Iterator[dict]:
    """Consecutive members sharing a key, as one dict per sample (the WebDataset convention)."""
    current: dict | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            match = _KEY_AND_SUFFIX.match(member.name) if member.isreg() else None
            if match is None:
                continue
            key, suffix = match.groups()
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "path": path}
            if keys_only:
                continue
            if member.size > max_member_bytes:  # the stream skips its data without reading it in
                current["__error__"] = (f"member {member.name!r} is {member.size:,} bytes, over the limit of "
                                        f"{max_member_bytes:,} (data.max_image_bytes)")
                continue
            if suffix in current:
                current["__error__"] = f"member {member.name!r} appears twice in the sample"
                continue
            current[suffix] = tar.extractfile(member).read()
    if current is not None:
        yield current


def _block(rows: list[dict]) -> pa.Table:
    names = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({n: pa.array([r.get(n) for r in rows], pa.string() if n in _TEXT_COLUMNS else pa.binary())
                     for n in names})
