"""A polite MediaWiki Action API client: rate limit, retries with backoff, response cache.

Retries 429, 5xx, network errors, malformed JSON and the API's own ``maxlag``/``ratelimited``
errors, waiting what ``Retry-After`` asks for or else an exponential backoff with jitter.
Only good answers are cached (a missing page is a good answer), so failures are retried by
the next run. Counters in ``stats`` say how many requests, cache hits and retries there were.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping

from biocap_ray.context.cache import ResponseCache

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_API_CODES = frozenset({"maxlag", "ratelimited", "readonly", "internal_api_error_DBQueryTimeoutError"})
MAX_RETRY_AFTER_S = 600.0


class ApiError(RuntimeError):
    """A request failed for good (retries exhausted, or an error retrying cannot fix)."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ApiClient:
    """GET requests to one API endpoint at most ``requests_per_second``, cached when a cache is given."""

    def __init__(
        self,
        api_url: str,
        *,
        user_agent: str,
        requests_per_second: float = 5.0,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        cache: ResponseCache | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_response_bytes: int = 8 * 2**20,
    ) -> None:
        self.api_url = api_url
        self.user_agent = user_agent
        self.interval = 1.0 / requests_per_second
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache = cache
        self.sleep = sleep
        self.max_response_bytes = max_response_bytes
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}
        self._lock = threading.Lock()
        self._next_at = 0.0

    def url(self, params: Mapping[str, object]) -> str:
        """The request URL; parameters sorted so equal requests share a cache entry."""
        query = urllib.parse.urlencode(sorted((k, str(v)) for k, v in params.items()))
        sep = "&" if "?" in self.api_url else "?"
        return f"{self.api_url}{sep}{query}"

    def get(self, params: Mapping[str, object]) -> dict:
        """The parsed JSON answer to ``params``, from the cache or the API."""
        url = self.url(params)
        if self.cache is not None:
            cached = self.cache.get(url)
            if cached is not None:
                self.stats["cache_hits"] += 1
                return cached
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            try:
                data = self._request(url)
            except _Retry as exc:
                last = str(exc)
                if attempt == self.max_retries:
                    break
                delay = exc.retry_after
                if delay is None:
                    delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
                self.sleep(min(delay, MAX_RETRY_AFTER_S))
                continue
            if self.cache is not None:
                self.cache.put(url, data)
            return data
        raise ApiError(f"{last} (gave up after {self.max_retries + 1} attempts)")

    def _throttle(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next_at - now
            self._next_at = max(now, self._next_at) + self.interval
        if wait > 0:
            self.sleep(wait)

    def _bounded(self, body: bytes) -> bytes:
        """``body`` if within ``max_response_bytes`` (read at most one byte more), else an error:
        an endpoint that streams without end must not fill the worker's memory."""
        if len(body) > self.max_response_bytes:
            raise ApiError(f"response over the limit of {self.max_response_bytes:,} bytes (context.max_response_bytes)")
        return body

    def _request(self, url: str) -> dict:
        self._throttle()
        self.stats["requests"] += 1
        request = urllib.request.Request(
            url, headers={"User-Agent": self.user_agent, "Accept": "application/json", "Accept-Encoding": "gzip"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = self._bounded(response.read(self.max_response_bytes + 1))
                if response.headers.get("Content-Encoding", "").lower() == "gzip":
                    try:
                        body = self._bounded(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
                            body, self.max_response_bytes + 1))
                    except zlib.error:
                        raise _Retry("malformed gzip in the response") from None
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except urllib.error.HTTPError as exc:
            if exc.code in RETRY_STATUS:
                raise _Retry(f"HTTP {exc.code}", _retry_after(exc.headers.get("Retry-After"))) from None
            raise ApiError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError) as exc:
            raise _Retry(f"network error: {exc}") from None
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Retry("malformed JSON in the response", retry_after) from None
        if not isinstance(data, dict):
            raise _Retry("unexpected JSON (not an object) in the response", retry_after)
        error = data.get("error")
        if isinstance(error, dict):
            code = str(error.get("code", ""))
            if code in RETRY_API_CODES:
                raise _Retry(f"API error {code}", retry_after)
            raise ApiError(f"API error {code}: {error.get('info', '')}")
        return data
