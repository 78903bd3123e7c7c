"""Open the built documentation in headless Chromium and check what a reader would see.

Per page: it renders (a title, a heading, links), the browser logs no error and no request
fails, every image is decoded (and each tutorial shows at least one figure), every internal
link resolves to a page that exists, anchor included. A full-page screenshot of each page
goes to ``docs/_build/screenshots/``.

Needs the built site (``./dev docs``), Debian's chromium (``.ci/install_chromium.sh``) and
Playwright (the ``docs`` extra; it drives the installed chromium, no browser download).
Without them the tests skip, saying which is missing; with ``PM_EM_REQUIRE_DOCS=1`` (set by
CI and ``./dev docs --check``) they fail instead.
"""

import functools
import html.parser
import http.server
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.docs.test_sources import TUTORIALS

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "docs" / "_build" / "html"
SHOTS = ROOT / "docs" / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("PM_EM_REQUIRE_DOCS") == "1"
# Flags that work on these machines (root, no network, small /dev/shm).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# (page, must show at least one figure)
PAGES = [
    ("index.html", False),
    ("getting_started.html", True),
    *((f"tutorials/{name}.html", True) for name in TUTORIALS),
    ("guide/arviz.html", True),
    ("api.html", False),
    ("generated/pm_em.fit.html", False),
]

pytestmark = pytest.mark.docs


def _missing() -> str | None:
    if not (SITE / "index.html").is_file():
        return f"the site is not built ({SITE}); run ./dev docs"
    if not Path(CHROMIUM).exists():
        return "chromium is not installed; run .ci/install_chromium.sh (as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed; ./dev docs installs the docs extra"
    return None


@pytest.fixture(scope="module", autouse=True)
def requirements():
    reason = _missing()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"PM_EM_REQUIRE_DOCS=1 but {reason}")
        pytest.skip(reason)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url(requirements):
    handler = functools.partial(_Quiet, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def browser(requirements):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)


@functools.cache
def _fetch(url: str) -> tuple[int, frozenset]:
    """HTTP status of a same-site URL, and the ids of its elements if it is a page."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body, status = response.read(), response.status
            ctype = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, frozenset()
    ids = _Ids()
    if "html" in ctype:
        ids.feed(body.decode("utf-8", "replace"))
    return status, frozenset(ids.ids)


def _broken_links(links, base_url: str) -> list[str]:
    bad = []
    for raw, resolved in sorted({tuple(link) for link in links}):
        if not raw.strip() or urllib.parse.urlsplit(raw).scheme or raw.startswith("//"):
            continue  # external (http:, mailto:, ...) links are not checked offline
        url, fragment = urllib.parse.urldefrag(resolved)
        if not url.startswith(base_url):
            bad.append(f"{raw!r} leaves the site ({resolved})")
            continue
        status, ids = _fetch(url)
        if status != 200:
            bad.append(f"{raw!r} -> HTTP {status}")
        elif fragment and urllib.parse.unquote(fragment) not in ids:
            bad.append(f"{raw!r} -> no element with id {fragment!r} in {url}")
    return bad


JS_IMAGES = """async () => Promise.all(Array.from(document.images).map(img => {
    img.loading = "eager";
    return img.decode().then(() => [img.getAttribute("src"), img.naturalWidth],
                             () => [img.getAttribute("src"), img.naturalWidth]);
}))"""
JS_LINKS = """() => Array.from(document.querySelectorAll("a[href]"))
    .map(a => [a.getAttribute("href"), a.href])"""


@pytest.mark.parametrize(("page", "wants_figure"), PAGES, ids=[p for p, _ in PAGES])
def test_page_renders(page, wants_figure, browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors = []
    tab.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    tab.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    tab.on("requestfailed", lambda r: errors.append(f"failed: {r.url} {r.failure}"))
    tab.on("response", lambda r: r.status >= 400 and errors.append(f"HTTP {r.status}: {r.url}"))
    try:
        response = tab.goto(base_url + page, wait_until="load")
        assert response is not None and response.status == 200
        images = tab.evaluate(JS_IMAGES)
        links = tab.evaluate(JS_LINKS)
        title = tab.title()
        heading = tab.locator("article h1").first.inner_text()
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = SHOTS / f"{page.removesuffix('.html').replace('/', '_')}.png"
        tab.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()
    assert "pm_em" in title and heading.strip(), (title, heading)
    assert not errors, "errors in the browser:\n" + "\n".join(errors)
    broken = [src for src, width in images if not width]
    assert not broken, f"images that did not load: {broken}"
    if wants_figure:
        assert any(width > 0 for _, width in images), "expected at least one figure"
    assert links, "no links: the page did not render"
    bad = _broken_links(links, base_url)
    assert not bad, "broken internal links:\n" + "\n".join(bad)
    assert shot.stat().st_size > 10_000, "the screenshot is suspiciously small"
