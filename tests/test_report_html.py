"""results/report.html as a reviewer sees it: rendered by headless Chromium (Debian's, installed by
scripts/install-system-deps.sh), checked on what is on screen -- the claims and their verdicts, the tables,
every plot decoded (naturalWidth > 0, laid out with a width), the below-convergence banner, and not one
network request.

No browser-driver dependency: the page is copied with a small check script added (allowed by a nonce in the
page's own Content-Security-Policy, which otherwise stays as written, so images must load under it); the
script runs after the load event and writes what it saw into the DOM; Chromium's ``--dump-dom`` prints it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pgps.params import load_params
from pgps.report.build import build
from report_fixtures import TASK, train_and_evaluate, write_params

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the flags this machine kind needs: without the background-networking ones the closed network stalls it
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NONCE = "pgpscheck"
CHECK = f"""<script nonce="{NONCE}">
window.addEventListener("load", () => {{
  const visible = (el) => {{ const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; }};
  const out = {{
    title: document.title,
    headings: [...document.querySelectorAll("h1, h2, h3")].filter(visible).map((h) => h.innerText),
    images: [...document.images].map((i) => ({{
      name: i.dataset.name, complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
      shownWidth: i.getBoundingClientRect().width }})),
    claims: [...document.querySelectorAll("table.claims tbody tr")].filter(visible).map(
      (tr) => [...tr.cells].map((td) => td.innerText)),
    verdictColours: [...document.querySelectorAll("table.claims tbody td:nth-child(3)")].map(
      (td) => getComputedStyle(td).backgroundColor),
    banner: [...document.querySelectorAll(".banner")].filter(visible).map((b) => b.innerText),
    text: document.body.innerText,
    requests: performance.getEntriesByType("resource").map((r) => r.name),
    pageWidth: document.documentElement.scrollWidth,
    viewportWidth: window.innerWidth,
  }};
  const pre = document.createElement("pre");
  pre.id = "pgps-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}});
</script>"""

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/install-system-deps.sh, as root)"
)


def _render(page: Path, tmp: Path) -> dict[str, Any]:
    """What Chromium shows of ``page`` (the check script's findings after the load event)."""
    text = page.read_text()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', text)
    assert csp, "the page declares no Content-Security-Policy"
    policy = csp.group(1) + f"; script-src 'nonce-{NONCE}'"
    checked = text.replace(csp.group(0), f'<meta http-equiv="Content-Security-Policy" content="{policy}">')
    checked = checked.replace("</body>", CHECK + "\n</body>")
    target = tmp / "check.html"
    target.write_text(checked)
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", "--window-size=1024,900"]
    cmd += ["--virtual-time-budget=10000", "--dump-dom", target.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="pgps-check">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert proc.returncode == 0 and found, f"chromium ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _report(ws: Path, folds: list[int], profile: str) -> Path:
    ws.mkdir()
    write_params(ws, folds, profile)
    train_and_evaluate(ws, folds)
    build(load_params(ws / "params.yaml"), ws / "results" / "runs", ws / "results")
    return ws / "results" / "report.html"


def test_browser_shows_claims_tables_and_every_plot(tmp_path: Path) -> None:
    seen = _render(_report(tmp_path / "ws", [0, 1], "full"), tmp_path)
    assert seen["title"] == "PGPS reproduction report"
    assert seen["headings"][:3] == ["PGPS reproduction report", "Claims", "Dice per task and method"]
    for heading in ("Per-class Dice (multi-label tasks)", "Statistical tests", "Where the training time went"):
        assert heading in seen["headings"]
    # every plot decoded and laid out
    assert [i["name"] for i in seen["images"]] == [
        "learning_curves.png",
        "curriculum.png",
        "runtime_co2.png",
        "time_breakdown.png",
    ]
    for image in seen["images"]:
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
        assert image["shownWidth"] > 100, image
    # the claims, with their verdicts, coloured by verdict
    claims = {row[0]: row for row in seen["claims"]}
    assert len(claims) == 5
    assert claims["Dice equal to or better than the constant-patch baseline: no significant decrease"][2] == "holds"
    most = claims["better Dice than the baseline on most tasks (paper: 7 of 10 MSD tasks)"]
    assert most[2:] == ["not testable at this size", "one task cannot say 'most tasks' (needs >= 3)"]
    assert len(set(seen["verdictColours"])) == 2  # holds / not testable: two colours
    # the paper-style table's row as text on screen (cells separated by tabs in innerText)
    assert re.search(rf"{TASK}\t0\.6250 ± 0\.0000\t0\.6713 ± 0\.0053 ↑", seen["text"]), seen["text"][:3000]
    assert not seen["banner"]
    assert seen["requests"] == []  # nothing fetched: plots are data: URIs, styles inline
    assert seen["pageWidth"] <= seen["viewportWidth"]  # wide tables scroll inside the page, not the page


def test_browser_shows_the_below_convergence_banner_and_no_false_spread(tmp_path: Path) -> None:
    seen = _render(_report(tmp_path / "ws", [0], "smoke"), tmp_path)
    assert len(seen["banner"]) == 1 and seen["banner"][0].startswith("Below convergence: profile smoke, 4 epochs x 6")
    assert "± 0.0000" not in seen["text"] and "0.6675 ± n/a" in seen["text"]
    assert [row[2] for row in seen["claims"]] == ["not testable at this size"] * 5
    assert all(i["naturalWidth"] > 0 for i in seen["images"]) and seen["requests"] == []
