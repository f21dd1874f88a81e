"""Screenshot of an HTML report in headless Chromium (for the README's docs/report.png).

    python benchmarks/report_screenshot.py REPORT.html docs/report.png [--height 2200]

Uses the system's Chromium (/usr/bin/chromium) through Playwright; prints any console errors and the
images that failed to load (none expected).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1150)
    ap.add_argument("--height", type=int, default=2200, help="clip the full-page shot to this height (px)")
    a = ap.parse_args()
    errors = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = b.new_page(viewport={"width": a.width, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(Path(a.html).resolve().as_uri())
        page.wait_for_load_state("load")
        bad = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                            ".map(i => i.alt)")
        height = page.evaluate("document.body.scrollHeight")
        page.screenshot(path=a.png, full_page=True, clip={"x": 0, "y": 0, "width": a.width,
                                                          "height": min(height, a.height)})
        b.close()
    print(f"screenshot: {a.png}; console errors: {errors or 'none'}; images not loaded: {bad or 'none'}")


if __name__ == "__main__":
    main()
