"""URI → (pyarrow filesystem, path): the one place that knows about S3.

S3 settings come from the standard AWS variables and profiles (``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, credentials via the SDK's default chain). Credentials are never
passed explicitly, so they are not pickled into Ray tasks, logged or put in messages.
"""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter
from urllib.parse import urlparse

import pyarrow.fs as pafs

_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the environment (endpoint and region only)."""
    kwargs: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem for ``uri`` and the path to use with it."""
    if is_s3(uri):
        return s3_filesystem(), uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise ValueError(f"unsupported URI scheme in {redact(uri)!r}: use a local path or s3://bucket/key")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def list_files(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """Data files under ``uri`` (a file or a folder, recursive) ending in one of ``suffixes``, sorted."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{redact(uri)}: not found")
    if info.type == pafs.FileType.File:
        return [path]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffixes) and not _hidden(i.path[len(path) :])
    )


def _hidden(relative: str) -> bool:
    """Paths with a part starting with ``_`` or ``.`` are side files (errors, markers), not data."""
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def absolute(uri: str) -> str:
    """A local path made absolute (for other processes and nodes); s3:// URIs unchanged."""
    return uri if is_s3(uri) else os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    if not is_s3(uri):
        fs.create_dir(path, recursive=True)


def remove_tree(uri: str) -> None:
    """Delete a folder and everything under it, if it exists."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def decode_text(data: bytes, problems: Counter | None = None) -> str:
    """UTF-8 text (a BOM dropped); lines that are not UTF-8 are kept with replacement characters
    and counted in ``problems["non_utf8_lines"]``, so one bad byte does not cost a whole file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        if problems is not None:
            problems["non_utf8_lines"] += sum(1 for line in text.splitlines() if "\ufffd" in line)
        return text


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file: readers see all of it or none (an S3 PUT is atomic; locally the bytes
    go to a hidden name first, then are renamed)."""
    fs, path = resolve(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/_tmp-{uuid.uuid4().hex[:12]}-{name}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def parquet_bytes(table) -> bytes:
    """``table`` as the bytes of one Parquet file (for :func:`write_bytes`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


def redact(text: str) -> str:
    """Remove credentials (from the environment or embedded in URIs) from a message."""
    text = re.sub(r"(://)[^/@\s]+:[^/@\s]+@", r"\1***@", text)
    for var in _SECRET_VARS:
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
