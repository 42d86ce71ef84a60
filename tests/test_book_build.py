"""Build the whole book from scratch at smoke scale, warnings as errors (the CI's book check), from the
chapters executed once a session, each in its own kernel (tests/executed_book.py), then read every
page in headless Chromium as a reader would: formulas rendered, nothing wider than the page, figures
loaded, links resolving, Colab buttons pointing at the repository, search working."""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from book_files import ROOT, config, toc_files, toc_notebooks

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# screenshots of two pages, for a person to look at; CI keeps _build/ of its clone
ARTIFACTS = Path(os.environ.get("ISMOD_ARTIFACTS", ROOT / "_build" / "browser"))
UNREADABLE = [
    (r"\{(?:&#39;|')\w+(?:&#39;|'): ", "a raw dict"),
    (r"\d{16,}", "a float printed in full"),
    (r"nan ± nan", "'nan ± nan'"),
]
# a run's commit as provenance prints it (Result.describe, provenance_summary, saved_or_measured)
PROVENANCE = re.compile(r"\bcommit [0-9a-f]{12}\b")
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:frac|sum|lVert|mathrm|operatorname|tau)\b")


@pytest.fixture(scope="module")
def smoke_book(executed_book) -> tuple[subprocess.CompletedProcess, Path]:
    # the chapters executed once, each in its own kernel (tests/executed_book.py), shared with the
    # notebook tests; the build renders those outputs rather than executing every chapter again
    executed_book.execute_all(toc_notebooks())
    settings = config()
    settings["execute"]["execute_notebooks"] = "off"
    out = executed_book.root
    (out / "_config.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [
        str(jupyter_book), "build", str(executed_book.source), "--config", str(out / "_config.yml"),
        "--toc", str(ROOT / "_toc.yml"), "--path-output", str(out), "--all", "-W", "-n", "--keep-going",
    ]  # fmt: skip
    # a hang bound, not a speed test
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    return run, out / "_build" / "html"


@pytest.mark.slow
def test_book_builds_clean_at_smoke_scale(smoke_book):
    run, html_dir = smoke_book
    reports = (
        sorted((html_dir / "reports").glob("**/*.log")) if (html_dir / "reports").exists() else []
    )
    logs = "\n".join(p.read_text()[-3000:] for p in reports)
    assert run.returncode == 0, (
        f"book build failed:\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}\n{logs}"
    )
    assert not reports, f"notebook execution reports:\n{logs}"
    for name in toc_files():
        assert (html_dir / f"{name}.html").exists(), f"{name}.html missing from the build"
    for notebook in toc_notebooks():
        page = (html_dir / f"{notebook.stem}.html").read_text()
        assert "colab.research.google.com/github/" in page, (
            f"{notebook.stem}: no Colab launch button"
        )
        assert 'src="_images/' in page, f"{notebook.stem}: the executed chapter shows no figures"
        # output a learner cannot use, never on a page, not even behind a button (#40)
        text = re.sub(r"<script.*?</script>|<[^>]+>", " ", page, flags=re.DOTALL)
        for pattern, what in UNREADABLE:
            found = re.search(pattern, text)
            assert not found, f"{notebook.stem}: {what} on the page: {found.group(0)[:80]!r}"
        # provenance sits behind a button (a hidden output is a <details> block), not in the reading flow
        shown = re.sub(r"<details.*?</details>", " ", page, flags=re.DOTALL)
        shown = re.sub(r"<script.*?</script>|<[^>]+>", " ", shown, flags=re.DOTALL)
        found = PROVENANCE.search(shown)
        assert not found, f"{notebook.stem}: provenance in the reading flow: {found.group(0)!r}"
    # formulas render without internet: MathJax is served from the book itself, not a CDN
    intro = (html_dir / "intro.html").read_text()
    assert 'src="_static/mathjax/tex-chtml.js"' in intro and "cdn.jsdelivr" not in intro
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").exists()


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"])


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(errors="replace"))
    return parser


def _broken_links(html_dir: Path, page: Path) -> list[str]:
    broken = []
    for href in _parsed(page).hrefs:
        parts = urlsplit(href)
        if parts.scheme or href.startswith(("mailto:", "javascript:")):
            continue  # external: not reachable offline, and not the book's to resolve
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(href)
        elif (
            parts.fragment
            and target.suffix == ".html"
            and unquote(parts.fragment) not in _parsed(target).ids
        ):
            broken.append(href)
    return broken


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # the flags keep Chromium off the network it cannot reach here (background services, updates)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


# run in the page: wait for MathJax, then report what a reader would see
_INSPECT = """
const done = arguments[arguments.length - 1];
const ready = window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve();
ready.then(() => {
  const article = document.querySelector("article") || document.body;
  const prose = article.cloneNode(true);
  prose.querySelectorAll("pre, .highlight, script, style, mjx-container").forEach(e => e.remove());
  const wide = [...article.querySelectorAll("pre")].filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.innerText.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), "").slice(0, 120));
  const images = [...article.querySelectorAll("img")];
  done({
    prose: prose.innerText,
    math: article.querySelectorAll("mjx-container").length,
    pageWide: document.documentElement.scrollWidth > document.documentElement.clientWidth + 1,
    wide: wide,
    brokenImages: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    images: images.length,
    colab: [...document.querySelectorAll("a[href*='colab.research.google.com']")].map(a => a.href),
    outputs: [...article.querySelectorAll(".cell_output")].map(o => o.innerText),
    figures: images.filter(i => i.naturalWidth > 0)
      .map(i => ({src: i.getAttribute("src"), shown: i.clientWidth, natural: i.naturalWidth})),
  });
});
"""


# what no cell output may show a reader: a traceback, a warning, or a path of the machine that built it
OUTPUT_LEAK = re.compile(
    r"Traceback|\b[A-Z]\w*Warning\b|/(?:work|home|root|tmp|usr)/|\.venv\b|site-packages"
)


def _load_and_inspect(driver, url: str, page: Path) -> dict:
    """Open ``url`` once the browser has finished with the last page (a full-page screenshot resizes the
    window to the page's height), wait until it has loaded, and inspect it; if a page with formulas
    came back with none rendered (a load cut short on a busy machine), load it once more."""
    from selenium.webdriver.support.ui import WebDriverWait

    for attempt in range(2):
        driver.get(url)
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        seen = driver.execute_async_script(_INSPECT)
        if seen["math"] or "math notranslate" not in page.read_text() or attempt:
            return seen
    return seen


# run in the page at a phone's width: whether the page scrolls sideways, and display equations that
# neither fit the column nor scroll in their own box (they run off the page or are cut off)
_PHONE = """
const width = document.documentElement.clientWidth;
const boxes = [...document.querySelectorAll('mjx-container[display="true"]')];
// the innermost elements past the screen's edge that do not scroll in a box of their own, to name
const past = e => e.getBoundingClientRect().right > width + 1;
const sticksOut = [...document.querySelectorAll("article *")]
  .filter(e => past(e) && ![...e.children].some(past) && !e.closest("mjx-container, pre, table"))
  .map(e => `${e.tagName.toLowerCase()}.${e.className}: ${(e.innerText || "").slice(0, 60)}`);
return {
  pageWide: document.documentElement.scrollWidth > width + 1,
  sticksOut: sticksOut.slice(0, 5),
  equations: boxes.filter(b => b.getBoundingClientRect().right > width + 1
    || (b.scrollWidth > b.clientWidth + 1 && !["auto", "scroll"].includes(getComputedStyle(b).overflowX)))
    // whole characters only: a cut through a surrogate pair (math italics) cannot be returned
    .map(b => Array.from((b.getAttribute("aria-label") || b.innerText || "").replace(/\\s+/g, " "))
      .slice(0, 60).join("")),
};
"""


def _at_phone_width(driver) -> dict:
    driver.set_window_size(420, 1000)
    try:
        return driver.execute_script(_PHONE)
    finally:
        driver.set_window_size(1400, 1000)


def _screenshots(driver, name: str) -> None:
    """The whole page at 1400 px and at 420 px (a phone), for a person to read."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (1400, 420):
        driver.set_window_size(width, 1000)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(int(height) + 120, 16000))
        driver.save_screenshot(str(ARTIFACTS / f"{name}-{width}.png"))
    driver.set_window_size(1400, 1000)


@pytest.mark.slow
def test_book_pages_in_a_browser(smoke_book, tmp_path):
    """What each check guards against: raw TeX where MathJax did not run (it used to load from a CDN),
    code or output wider than the column, a display equation that runs off a phone's screen, a
    figure that does not load, a link to nowhere, a Colab
    button that opens the wrong file, and a search index that finds nothing."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium and chromium-driver (.ci/run installs them)")
        pytest.skip(
            "needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        )
    run, html_dir = smoke_book
    assert run.returncode == 0, "the book did not build (see test_book_builds_clean_at_smoke_scale)"
    repo = config()["repository"]
    slug = urlsplit(repo["url"]).path.strip("/")
    notebooks = {p.stem for p in toc_notebooks()}
    server, base = _serve(html_dir)
    driver = _chromium(tmp_path / "profile")
    driver.set_script_timeout(60)
    problems: list[str] = []
    figures: dict[
        str, list
    ] = {}  # each figure's shown and natural width at 1400 px, for the record
    try:
        for name in toc_files():
            page = html_dir / f"{name}.html"
            problems += [f"{name}: broken link {href}" for href in _broken_links(html_dir, page)]
            seen = _load_and_inspect(driver, base + f"{name}.html", page)
            raw = RAW_TEX.findall(seen["prose"])
            if raw:
                problems.append(f"{name}: raw TeX in the text ({sorted(set(raw))[:5]})")
            if "math notranslate" in page.read_text() and not seen["math"]:
                problems.append(f"{name}: formulas present but none rendered")
            if seen["pageWide"]:
                problems.append(f"{name}: the page scrolls sideways")
            problems += [f"{name}: code wider than the column: {line!r}" for line in seen["wide"]]
            problems += [f"{name}: image did not load: {src}" for src in seen["brokenImages"]]
            if name in notebooks:
                expected = (f"https://colab.research.google.com/github/{slug}/blob/{repo['branch']}/"
                            f"{repo['path_to_book']}/{name}.ipynb")  # fmt: skip
                if expected not in seen["colab"]:
                    problems.append(f"{name}: Colab link {seen['colab']} is not {expected}")
                if not seen["images"]:
                    problems.append(f"{name}: no figures")
            for text in seen["outputs"]:
                leak = OUTPUT_LEAK.search(text)
                if leak:
                    problems.append(f"{name}: an output shows {leak.group(0)!r}: {text[:160]!r}")
            figures[name] = seen["figures"]
            for fig in seen["figures"]:  # every figure at 70% of its natural width or more
                if fig["shown"] < 0.7 * fig["natural"]:
                    problems.append(
                        f"{name}: figure {fig['src']} shown at {fig['shown']} of {fig['natural']} px"
                    )
            phone = _at_phone_width(driver)
            if phone["pageWide"]:
                problems.append(
                    f"{name}: the page scrolls sideways at 420 px: {phone['sticksOut']}"
                )
            problems += [f"{name}: a display equation runs off a 420 px screen: {eq!r}"
                         for eq in phone["equations"]]  # fmt: skip
            _screenshots(driver, name)
        driver.get(base + "search.html?q=presample")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li")
        )
        hits = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#search-results li a")]
        if not any("τ switch" in hit or "Presample" in hit for hit in hits):
            problems.append(f"search for 'presample' did not find Chapter 5: {hits[:5]}")
    finally:
        driver.quit()
        server.shutdown()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "figures.json").write_text(json.dumps(figures, indent=1))
    assert not problems, "\n".join(problems)
