"""The real HTTP client and page selection against a local MediaWiki API stand-in."""

from __future__ import annotations

import pytest

from biocap_ray.context.cache import ResponseCache
from biocap_ray.context.http import ApiClient, ApiError
from biocap_ray.context.taxa import taxon_query
from biocap_ray.context.wikipedia import LICENCE, fetch_context


def _client(wiki, tmp_path=None, sleeps=None, **kwargs):
    options = {"requests_per_second": 1000.0, "max_retries": 3, "backoff_s": 0.01, "timeout_s": 5.0}
    options.update(kwargs)
    return ApiClient(
        wiki.url,
        user_agent="biocap-ray-tests/0.1 (tests)",
        cache=ResponseCache(str(tmp_path / "cache")) if tmp_path else None,
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)),
        **options,
    )


def _query(**row):
    return taxon_query(row)


COUGAR_ROW = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Mammalia", "order": "Carnivora",
              "family": "Felidae", "genus": "Puma", "species": "concolor (Linnaeus, 1771)", "common_name": "cougar"}


def test_redirected_species_takes_description_section(fake_wiki):
    row = fetch_context(_client(fake_wiki), _query(**COUGAR_ROW))
    assert row["status"] == "ok"
    assert row["name"] == "Puma concolor"
    assert row["page_title"] == "Cougar" and row["match"] == "redirect"
    assert row["section"] == "Description"
    assert row["revision_id"] == fake_wiki.pages["Cougar"]["revid"]
    assert row["url"] == "https://en.wikipedia.org/wiki/Cougar"
    assert row["licence"] == LICENCE == "CC BY-SA 4.0"
    text = row["text"]
    assert "slender body with a plain tawny coat" in text and "erect ears" in text
    assert "[1]" not in text and "hunts deer" not in text and "ref" not in text
    assert "1.5–2.4 m" in text  # the convert template rendered, the subsection included
    assert all(ua == "biocap-ray-tests/0.1 (tests)" for ua in fake_wiki.user_agents)


def test_lead_used_when_no_description_section(fake_wiki):
    row = fetch_context(_client(fake_wiki), _query(genus="Vulpes", species="vulpes", kingdom="Animalia"))
    assert row["page_title"] == "Vulpes vulpes" and row["match"] == "exact" and row["section"] == "lead"
    assert "rusty orange fur" in row["text"] and "Northern Hemisphere" not in row["text"]


@pytest.mark.parametrize(
    ("lineage", "title", "word"),
    [
        ({"kingdom": "Plantae", "order": "Rosales", "family": "Moraceae"}, "Morus (plant)", "toothed leaves"),
        ({"kingdom": "Animalia", "class": "Aves", "family": "Sulidae"}, "Morus (bird)", "black wing tips"),
    ],
)
def test_homonym_genus_skips_disambiguation_and_matches_taxobox(fake_wiki, lineage, title, word):
    row = fetch_context(_client(fake_wiki), _query(genus="Morus", **lineage))
    assert row["rank"] == "genus" and row["status"] == "ok"
    assert row["page_title"] == title and row["match"] == "search"
    assert word in row["text"]


def test_missing_and_empty_pages(fake_wiki):
    client = _client(fake_wiki)
    missing = fetch_context(client, _query(genus="Nonexistus", species="fictus", kingdom="Animalia"))
    assert missing["status"] == "not_found" and missing.get("text") is None
    assert "missing" in missing["note"]
    empty = fetch_context(client, _query(genus="Emptyus", species="blankus"))
    assert empty["status"] == "empty" and empty["text"] is None and empty["page_title"] == "Emptyus blankus"


def test_429_is_retried_after_retry_after(fake_wiki):
    fake_wiki.failures["Vulpes vulpes"] = [(429, "2"), (503, "")]
    sleeps: list[float] = []
    client = _client(fake_wiki, sleeps=sleeps)
    row = fetch_context(client, _query(genus="Vulpes", species="vulpes"))
    assert row["status"] == "ok"
    assert client.stats["retries"] == 2 and client.stats["requests"] == 3
    assert 2.0 in sleeps  # Retry-After honoured
    assert any(0 < s <= 0.02 for s in sleeps if s != 2.0)  # then exponential backoff


def test_malformed_json_fails_after_retries_and_is_not_cached(fake_wiki, tmp_path):
    fake_wiki.malformed.add("Brokenus jsonus")
    client = _client(fake_wiki, tmp_path, max_retries=2)
    with pytest.raises(ApiError, match="malformed JSON"):
        fetch_context(client, _query(genus="Brokenus", species="jsonus"))
    assert len(fake_wiki.requests) == 3
    fake_wiki.malformed.clear()
    row = fetch_context(client, _query(genus="Brokenus", species="jsonus"))
    assert row["status"] == "not_found"  # asked again: the failure was not cached


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_an_oversized_response_is_refused_unread(fake_wiki, encoding):
    """A reply over the limit (or a small gzip body that inflates past it) is a clear error,
    read no further than the limit, and not retried."""
    import gzip

    big = b'{"batchcomplete": true, "pad": "' + b"x" * 300_000 + b'"}'
    body = gzip.compress(big) if encoding == "gzip" else big
    assert encoding == "identity" or len(body) < 10_000  # the bomb is small on the wire
    fake_wiki.raw["Hugeus pagus"] = ({"Content-Encoding": encoding}, body)
    client = _client(fake_wiki, max_response_bytes=100_000)
    with pytest.raises(ApiError, match="over the limit of 100,000 bytes"):
        client.get({"titles": "Hugeus pagus"})
    assert client.stats["requests"] == 1
    assert _client(fake_wiki, max_response_bytes=400_000).get({"titles": "Hugeus pagus"})["pad"][:3] == "xxx"


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_an_endless_response_costs_the_client_no_more_than_its_limit(fake_wiki, encoding):
    """40 MB on the wire (or inflating to it) against a 100 kB limit: the client's memory peak
    stays near the limit, so it never read the body whole."""
    import gzip
    import tracemalloc

    big = b'{"pad": "' + b"x" * 40_000_000 + b'"}'
    fake_wiki.raw["Endless"] = ({"Content-Encoding": encoding}, gzip.compress(big, 1) if encoding == "gzip" else big)
    del big
    client = _client(fake_wiki, max_response_bytes=100_000)
    tracemalloc.start()
    try:
        with pytest.raises(ApiError, match="over the limit of 100,000 bytes"):
            client.get({"titles": "Endless"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def test_cache_makes_rerun_request_nothing(fake_wiki, tmp_path):
    queries = [_query(**COUGAR_ROW), _query(genus="Morus", kingdom="Plantae"), _query(genus="Nix", species="nox")]
    first = [fetch_context(_client(fake_wiki, tmp_path), q) for q in queries]
    assert len(fake_wiki.requests) > 0
    fake_wiki.reset_counts()
    client = _client(fake_wiki, tmp_path)
    again = [fetch_context(client, q) for q in queries]
    assert fake_wiki.requests == [] and client.stats["requests"] == 0
    assert again == first


def test_rate_limit_spaces_requests(fake_wiki):
    import time

    client = ApiClient(fake_wiki.url, user_agent="biocap-ray-tests/0.1", requests_per_second=10.0)
    start = time.monotonic()
    for _ in range(4):
        client.get({"action": "query", "format": "json", "titles": "Cougar"})
    assert time.monotonic() - start >= 0.29  # 4 requests at 10/s: 3 gaps of 0.1 s
