"""`difflab report` (one self-contained HTML page, opened in headless Chromium: no console errors, every
image loads, nothing fetched) and `difflab compare` (one table of several runs' metrics)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from difflab.cli import main

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "3", "--batch-size", "8", "--quiet"]) == 0
    # results other engineers' tools leave in a run folder: shown as tables, a broken one skipped
    (run / "elbo_terms.json").write_text(json.dumps({"elbo": {"L_T": 0.01, "L_0": 1.2, "sum_L_t": 3.4},
                                                     "bpd": 4.5}))
    (run / "samplers.json").write_text(json.dumps({"rows": [{"sampler": "ddim", "nfe": 10, "fd": 3.0},
                                                            {"sampler": "ancestral", "nfe": 100, "fd": 2.0}]}))
    (run / "broken.json").write_text("{not json")
    out = root / "report.html"
    assert main(["report", str(run), "--out", str(out), "--n", "40", "--nfe", "4", "--quiet"]) == 0
    return run, out


def test_report_is_self_contained(report):
    run, out = report
    page = out.read_text()
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert srcs and all(s.startswith(("data:", "#")) for s in srcs), [s[:40] for s in srcs]
    assert "http://" not in page and "https://" not in page
    for needle in ("Config", "Loss curve", "Metrics", "frechet", "floor", "ELBO", "L_T", "Sampler comparison"):
        assert needle in page, needle
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["frechet"]["n"] == 40 and metrics["_meta"]["nfe"] == 4


def test_report_renders_in_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                                                 "(pip install playwright)")
    _, out = report
    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
            title = page.title()
        finally:
            browser.close()
    assert not errors, errors
    assert len(images) >= 5, images
    assert all(done and width > 0 for done, width, _ in images), images
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert title.startswith("difflab report")


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_compare_two_runs(report, tmp_path, capsys):
    run, _ = report
    other = tmp_path / "other"
    shutil.copytree(run, other)
    m = json.loads((other / "metrics.json").read_text())
    m["frechet"]["value"] = 123.0
    (other / "metrics.json").write_text(json.dumps(m))
    js = tmp_path / "table.json"
    assert main(["compare", str(run), str(other), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[0] == "run" and "frechet" in head and "precision_recall.recall" in head
    assert len(lines) == 2 + 2 + 2                      # header, rule, two runs, floor, better
    col = head.index("frechet")
    assert [c.strip() for c in lines[3].strip("|").split("|")][col].startswith("123")
    t = json.loads(js.read_text())
    assert t["runs"] == [str(run), str(other)] and t["table"][str(other)]["frechet"]["value"] == 123.0
