"""Fixtures for the context tests: a local MediaWiki API stand-in and a small Ray instance."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

COUGAR = """{{Short description|Large cat}}
{{Speciesbox
| name = Cougar
| genus = Puma
| species = concolor
| authority = ([[Carl Linnaeus|Linnaeus]], 1771)
}}
The '''cougar''' (''Puma concolor'') {{IPA|/ˈkuːɡər/}} is a large [[cat]] native to the Americas.<ref>{{cite web|url=x}}</ref>

== Taxonomy ==
It was named by [[Carl Linnaeus]] in 1771.

== Description ==
[[File:Cougar.jpg|thumb|A cougar on a rock]]
The cougar has a slender body with a plain tawny coat and a long tail with a black tip.[1] Its head is round \
with erect ears.<ref name="a"/> It hunts deer at night.
=== Size ===
Adults are {{convert|1.5|-|2.4|m|ft|abbr=on}} long.

== Behaviour ==
Mostly solitary.
[[Category:Felids]]
"""

RED_FOX = """{{Speciesbox
| genus = Vulpes
| species = vulpes
}}
The '''red fox''' (''Vulpes vulpes'') is a small canid with rusty orange fur, a white throat and a bushy tail.
It is found across the Northern Hemisphere.
"""

MORUS_PLANT = """{{Taxobox
| regnum = [[Plant]]ae
| ordo = [[Rosales]]
| familia = [[Moraceae]]
| genus = '''''Morus'''''
}}
'''''Morus''''' is a genus of flowering plants in the family [[Moraceae]].

== Description ==
Mulberries are fast-growing trees with broad, toothed leaves and dark purple, many-seeded fruit.
"""

MORUS_BIRD = """{{Taxobox
| regnum = [[Animal]]ia
| classis = [[Aves]]
| ordo = [[Suliformes]]
| familia = [[Sulidae]]
| genus = '''''Morus'''''
}}
'''''Morus''''' is a genus of seabirds in the family [[Sulidae]], the gannets.

== Description ==
Gannets are large white birds with black wing tips and a long, pointed, blue-grey bill.
"""

DISAMBIGUATION = """'''Morus''' may refer to:
* [[Morus (plant)]], the mulberries
* [[Morus (bird)]], the gannets
{{Disambiguation|genus}}
"""

EMPTY = """{{Speciesbox
| genus = Emptyus
| species = blankus
}}
"""


class FakeWiki:
    """Enough of api.php (action=query, titles/redirects, generator=search, formatversion=2)."""

    def __init__(self) -> None:
        self.pages: dict[str, dict] = {}
        self.redirects: dict[str, str] = {}
        self.failures: dict[str, list[tuple[int, str]]] = {}  # title → [(status, Retry-After)]
        self.malformed: set[str] = set()
        self.down: set[str] = set()  # titles answered with 503 for as long as they are listed
        self.raw: dict[str, tuple[dict[str, str], bytes]] = {}  # title → (headers, body) answered as is
        self.requests: list[dict] = []
        self.user_agents: list[str] = []
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def add(self, title: str, wikitext: str, *, disambiguation: bool = False) -> None:
        page_id = len(self.pages) + 100
        self.pages[title] = {"text": wikitext, "pageid": page_id, "revid": page_id * 10, "dab": disambiguation}

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/w/api.php"

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    def _page(self, title: str, index: int | None = None) -> dict:
        page = self.pages.get(title)
        if page is None:
            return {"ns": 0, "title": title, "missing": True}
        out = {
            "pageid": page["pageid"],
            "ns": 0,
            "title": title,
            "fullurl": f"https://en.wikipedia.org/wiki/{title.replace(' ', '_')}",
            "revisions": [{"revid": page["revid"], "slots": {"main": {"content": page["text"]}}}],
        }
        if page["dab"]:
            out["pageprops"] = {"disambiguation": ""}
        if index is not None:
            out["index"] = index
        return out

    def answer(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.requests.append(params)
        subject = params.get("titles") or params.get("gsrsearch") or ""
        if subject in self.down:
            return 503, {}, b"down"
        if subject in self.raw:
            return 200, *self.raw[subject]
        plan = self.failures.get(subject)
        if plan:
            status, retry_after = plan.pop(0)
            return status, {"Retry-After": retry_after}, b"slow down"
        if subject in self.malformed:
            return 200, {}, b'{"batchcomplete": true, "query": {"pages": [{'
        query: dict = {}
        if "titles" in params:
            pages, redirects = [], []
            for title in params["titles"].split("|"):
                title = title[:1].upper() + title[1:]
                if title in self.redirects:
                    redirects.append({"from": title, "to": self.redirects[title]})
                    title = self.redirects[title]
                pages.append(self._page(title))
            query = {"pages": pages}
            if redirects:
                query["redirects"] = redirects
        elif params.get("generator") == "search":
            term = params["gsrsearch"].lower()
            limit = int(params.get("gsrlimit", 10))
            hits = [t for t in self.pages if term in t.lower() or term in self.pages[t]["text"].lower()]
            query = {"pages": [self._page(t, i + 1) for i, t in enumerate(hits[:limit])]}
        body = {"batchcomplete": True}
        if query.get("pages"):
            body["query"] = query
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _handler(wiki: FakeWiki):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            wiki.user_agents.append(self.headers.get("User-Agent", ""))
            params = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            status, headers, body = wiki.answer(params)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def standard_pages(wiki: FakeWiki) -> None:
    wiki.add("Cougar", COUGAR)
    wiki.redirects["Puma concolor"] = "Cougar"
    wiki.add("Vulpes vulpes", RED_FOX)
    wiki.add("Morus", DISAMBIGUATION, disambiguation=True)
    wiki.add("Morus (plant)", MORUS_PLANT)
    wiki.add("Morus (bird)", MORUS_BIRD)
    wiki.add("Emptyus blankus", EMPTY)


@pytest.fixture(scope="session")
def _wiki_server():
    wiki = FakeWiki()
    wiki.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(wiki))
    thread = threading.Thread(target=wiki.server.serve_forever, daemon=True)
    thread.start()
    yield wiki
    wiki.server.shutdown()
    wiki.server.server_close()


@pytest.fixture
def fake_wiki(_wiki_server):
    """The shared server with fresh pages, failure plans and request counts for each test."""
    wiki = _wiki_server
    wiki.pages.clear()
    wiki.redirects.clear()
    wiki.failures.clear()
    wiki.malformed.clear()
    wiki.down.clear()
    wiki.raw.clear()
    wiki.requests.clear()
    wiki.user_agents.clear()
    standard_pages(wiki)
    return wiki


@pytest.fixture(scope="session")
def ray_context(request):
    """Local Ray on 2 CPUs, shared with the rest of the session.

    When the top-level ``s3_endpoint`` fixture exists it is set up first, so that Ray workers
    inherit its AWS variables even if these tests are the first to start Ray.
    """
    import ray

    try:
        request.getfixturevalue("s3_endpoint")
    except pytest.FixtureLookupError:
        pass
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()
