"""The self-contained HTML report: its markup, and the page as a real headless Chromium shows it."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from audit.errors import AuditError
from audit.report.html import render_html, write_html
from audit.report.terminal import MODEL_ROWS, PAIR_ROWS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Tags with their attributes, and every table as ``{caption: [row cells, ...]}``, of one HTML document."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._text: list[str] | None = None
        self._rows: list[list[str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._rows.append([])
        if tag in ("td", "th", "caption"):
            self._text = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._rows[-1].append("".join(self._text))
        elif tag == "caption":
            self._caption = "".join(self._text)
        elif tag == "table":
            self.tables[self._caption], self._rows = self._rows, []
        if tag in ("td", "th", "caption"):
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def rows(self, caption_start: str) -> dict[str, list[str]]:
        """The rows of the table whose caption starts so, keyed by their first cell."""
        (table,) = [rows for caption, rows in self.tables.items() if caption.startswith(caption_start)]
        return {row[0]: row[1:] for row in table}


@pytest.fixture(scope="module")
def pages(tmp_path_factory, _compare_once: dict, _replicate_once: dict) -> dict[str, Path]:
    """The compare and replicate reports written once as HTML files (rendering the figures is the slow part)."""
    folder = tmp_path_factory.mktemp("html")
    return {"compare": write_html(json.loads(json.dumps(_compare_once)), folder / "compare.html"),
            "replicate": write_html(_replicate_once, folder / "replicate.html")}


def test_compare_page_is_self_contained(pages: dict[str, Path]) -> None:
    text = pages["compare"].read_text(encoding="utf-8")
    page = Page(text)
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "base"}
    assert "http://" not in text and "https://" not in text
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 6  # reliability, histograms, one scatter and one divergence figure per student
    for src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):])[:8] == PNG_SIGNATURE
    assert not list(pages["compare"].parent.glob(".*.tmp"))


def test_compare_page_has_the_terminal_rows(compare_report: dict, pages: dict[str, Path]) -> None:
    page = Page(pages["compare"].read_text(encoding="utf-8"))
    models, pairs = compare_report["models"], compare_report["pairs"]
    rows = page.rows("Confidence and calibration")
    assert rows["metric"] == [f"{name} ({m['role']})" for name, m in models.items()]
    for key, label, fmt in MODEL_ROWS:
        if not any(key in m for m in models.values()):  # a token-level field: no row on a classifier page
            assert label not in rows
            continue
        assert rows[label] == [fmt.format(m[key]) for m in models.values()]
    rows = page.rows("Teacher -> student")
    for key, label, fmt in PAIR_ROWS:
        if key not in pairs[0]:
            assert label not in rows
            continue
        assert rows[label] == [f"{fmt.format(p[key]['value'])} [{fmt.format(p[key]['ci'][0])}, "
                               f"{fmt.format(p[key]['ci'][1])}]" for p in pairs]
    rows = page.rows("Which way")
    diff = compare_report["students"][0]["entropy_difference"]
    _, direction = rows[f"{compare_report['students'][0]['b']} vs {compare_report['students'][0]['a']}"]
    assert direction == ("more confident" if diff["ci"][1] < 0 else "less confident" if diff["ci"][0] > 0
                         else "no clear change")
    assert len(rows) == 1 + len(pairs) + len(compare_report["students"])
    rows = page.rows("Versions")
    for key, value in compare_report["versions"].items():
        assert rows[key] == [value]
    for pair in pairs:  # where each student diverges: its largest-KL examples, largest first, as the JSON has them
        rows = page.rows(f"{pair['student']}: the largest KL")
        kls = [float(rows[c["id"]][0]) for c in pair["divergence"]["top_contexts"]]
        assert kls == sorted(kls, reverse=True) and kls[0] == pytest.approx(pair["divergence"]["top_contexts"][0]["kl"], rel=1e-3)


def test_write_html_escapes_and_replaces_atomically(compare_report: dict, tmp_path) -> None:
    name = '<script>alert("x")</script>'
    compare_report["models"][name] = compare_report["models"].pop("student-kd")
    compare_report["pairs"][0]["student"] = name
    compare_report["pairs"][0]["verdict_reason"] = "<b>bold</b> & more"
    (tmp_path / "r.html").write_text("old")
    write_html(compare_report, tmp_path / "r.html")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert name in Page(text).rows("Models")  # the browser shows the name as written
    assert "student &lt;ls&gt; &amp; &quot;co&quot;" in text


def test_bad_schema_writes_nothing(tmp_path) -> None:
    with pytest.raises(AuditError, match="expected a report with schema"):
        write_html({"schema": "nope"}, tmp_path / "r.html")
    with pytest.raises(AuditError, match="expected a report with schema"):
        render_html({})
    assert list(tmp_path.iterdir()) == []


def test_replicate_page(replicate_report: dict, pages: dict[str, Path]) -> None:
    page = Page(pages["replicate"].read_text(encoding="utf-8"))
    (claims,) = [rows for caption, rows in page.tables.items() if caption.startswith("Claims")]
    assert claims[1:] == [[c["claim"], c["statement"], c["verdict"], c["statistic"],  # a claim has several rows
                           f"{c['value']:+.4g} [{c['ci'][0]:+.4g}, {c['ci'][1]:+.4g}]", c["detail"]]
                          for c in replicate_report["claims"]]
    rows = page.rows("Mean over seeds")
    for a in replicate_report["arms"]:
        (h_lo, h_hi), (a_lo, a_hi), (t_lo, t_hi) = a["entropy"]["ci"], a["accuracy"]["ci"], a["temperature"]["ci"]
        teacher = "-" if a["teacher"] is None else a["teacher"] + (
            f" / {a['teacher_temperature']:g}" if a["teacher_temperature"] != 1.0 else "")
        assert rows[a["arm"]] == [a["method"], a["setup"], teacher,
                                  f"{a['entropy']['value']:.4f} [{h_lo:.4f}, {h_hi:.4f}]",
                                  f"{a['accuracy']['value']:.3f} [{a_lo:.3f}, {a_hi:.3f}]",
                                  f"{a['temperature']['value']:.3f} [{t_lo:.3f}, {t_hi:.3f}]", str(len(a["per_seed"]))]
    assert rows["small-kd-tau2"][2] == "big-erm / 2"
    assert page.rows("Overall") == {"claim": ["verdict (its weakest check: fails, inconclusive, negligible, holds)"],
                                    **{c: [v] for c, v in
                                                             replicate_report["claim_verdicts"].items()}}
    assert len(page.tables["Per seed"]) == 1 + sum(len(a["per_seed"]) for a in replicate_report["arms"])
    inheritance = replicate_report["inheritance"]
    lo, hi = inheritance["spearman"]["ci"]
    rows = page.tables[f"Inheritance: Spearman {inheritance['spearman']['value']:.3f} [{lo:.3f}, {hi:.3f}]"]
    assert rows[1:] == [[f"{t:.4f}", f"{s:.4f}"] for t, s in
                        zip(inheritance["teacher_entropy"], inheritance["student_entropy"], strict=True)]
    assert sum(tag == "img" for tag, _ in page.tags) == 2


# --- a real headless Chromium ------------------------------------------------------------------------

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Chromium and chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def open_page(driver, url: str) -> list[str]:
    """Load ``url``; return the URL of every request that page made (CDP Network events of the performance log).

    Requests of the browser's own pages (its new-tab page loads ``chrome://`` resources at start-up) carry
    another ``documentURL`` and are left out.
    """
    driver.get("about:blank")
    driver.get_log("performance")  # drop what came before
    driver.get(url)
    messages = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    return [m["params"].get("request", m["params"]).get("url", "") for m in messages
            if m["method"] == "Network.webSocketCreated"
            or (m["method"] == "Network.requestWillBeSent" and m["params"].get("documentURL") == url)]


def offsite(requests: list[str], page_url: str) -> list[str]:
    return [url for url in requests if url != page_url and not url.startswith("data:")]


def check_rendered(driver, url: str, min_tables: int, min_images: int, texts: list[str]) -> None:
    requests = open_page(driver, url)
    assert url in requests and offsite(requests, url) == []
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in resources if not r.startswith("data:")] == []
    tables = driver.execute_script("return [...document.querySelectorAll('table')].map(t => t.innerText)")
    assert len(tables) >= min_tables
    body = "\n".join(tables)
    for text in texts:
        assert text in body
    widths = driver.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= min_images and min(widths) > 0
    assert driver.execute_script("return document.scripts.length") == 0
    from PIL import Image

    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    assert shot.width >= 800 and shot.height >= 600
    assert len(shot.getcolors(maxcolors=1 << 20) or range(1 << 20)) > 50, "the screenshot is nearly blank"


@pytest.mark.browser
def test_compare_page_in_chromium(browser, compare_report: dict, pages: dict[str, Path]) -> None:
    texts = ["ECE (equal-width)", "top-1 agreement", "Which way", 'student <ls> & "co"', "student-kd: the largest KL",
             compare_report["versions"]["torch"]]
    check_rendered(browser, pages["compare"].as_uri(), min_tables=6, min_images=6, texts=texts)


@pytest.mark.browser
def test_replicate_page_in_chromium(browser, replicate_report: dict, pages: dict[str, Path]) -> None:
    texts = [c["statement"] for c in replicate_report["claims"]] + [a["arm"] for a in replicate_report["arms"]]
    check_rendered(browser, pages["replicate"].as_uri(), min_tables=4, min_images=2, texts=texts)


@pytest.mark.browser
def test_network_check_sees_a_remote_image(browser, tmp_path) -> None:
    """The no-network check itself: a page that does load a remote image is caught."""
    page = tmp_path / "remote.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    assert offsite(open_page(browser, page.as_uri()), page.as_uri()) == ["http://127.0.0.1:9/x.png"]


def _insufficient_report() -> dict:
    """A real compare report on 6 examples: too few for a verdict (VerdictRule.min_clusters = 10)."""
    from audit.compare import CompareSettings, compare_predictions
    from audit.load.models import Predictions

    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(6, 3, generator=g)
    with pytest.warns(UserWarning, match="every verdict is insufficient: 6 examples"):
        return compare_predictions(Predictions("teacher", teacher), [Predictions("student", teacher + 0.1)],
                                   torch.tensor([0, 1, 2, 0, 1, 2]), settings=CompareSettings(n_bootstrap=20))


def test_an_insufficient_verdict_is_on_the_page(tmp_path) -> None:
    report = _insufficient_report()
    assert report["pairs"][0]["verdict"] == "insufficient"
    text = write_html(report, tmp_path / "r.html").read_text(encoding="utf-8")
    assert '<span class="unsure">insufficient</span>' in text and "6 examples (bootstrap clusters)" in text


@pytest.mark.browser
def test_an_insufficient_verdict_in_chromium(browser, tmp_path) -> None:
    path = write_html(_insufficient_report(), tmp_path / "r.html")
    open_page(browser, path.as_uri())
    body = browser.execute_script("return document.body.innerText")
    assert "insufficient" in body and "a verdict needs at least 10" in body
