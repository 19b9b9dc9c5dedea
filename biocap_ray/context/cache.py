"""An on-disk cache of API responses, keyed by the full request, local or s3://.

One JSON file per request (``<hash[:2]>/<hash>.json``), so concurrent tasks never write the
same file for different requests and a rerun, or a resumed run, fetches nothing twice. Files are
written whole (:func:`biocap_ray.storage.write_bytes`), so an interrupted write leaves no half
file behind. A file that does not parse is a miss.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow.fs as pafs

from biocap_ray import storage


def request_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


class ResponseCache:
    """get/put parsed JSON responses by request URL. Picklable: the filesystem is opened lazily."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self._fs: pafs.FileSystem | None = None
        self._root = ""

    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"])

    def _paths(self, url: str) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            self._fs, self._root = storage.resolve(self.uri)
        key = request_key(url)
        return self._fs, f"{self._root}/{key[:2]}/{key}.json"

    def get(self, url: str) -> dict | None:
        fs, path = self._paths(url)
        try:
            with fs.open_input_stream(path) as f:
                entry = json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("url") != url:
            return None  # a hash collision or a foreign file
        return entry.get("response")

    def put(self, url: str, response: dict) -> None:
        key = request_key(url)
        data = json.dumps({"url": url, "response": response}, ensure_ascii=False).encode()
        storage.write_bytes(storage.join(self.uri, key[:2], f"{key}.json"), data)
