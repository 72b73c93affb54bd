"""Benchmark: the HTML report of a 10,000-trial sweep - its size, the time to build it, and how long headless
Chromium takes to open it (load event, every figure drawn) next to a 5-trial report in the same run.

A finished sweep is written by hand (tests/launcher/test_report.big_sweep: a result.json per trial, no curves), its
report built as `ftl report` builds it, then opened 3 times in headless Chromium with a probe that records, in the
page's own clock, when the load event ended and when the last plotly figure was drawn. Goals (issue #21): page
<= 15 MB, opens in <= 3 s. Last line: `report_10000_open_s: X` (the median).

    python bench/report_open.py [--trials 10000]
"""

from __future__ import annotations

import argparse
import html
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROBE = """<script>
addEventListener("load", () => {
  const t = performance.timing, start = t.navigationStart;
  const wait = () => {
    const plots = [...document.querySelectorAll(".js-plotly-plot")];
    if (plots.some(p => !p.querySelector("svg.main-svg"))) return setTimeout(wait, 20);
    const pre = document.createElement("pre");
    pre.id = "timing";
    pre.textContent = JSON.stringify({load_ms: t.loadEventStart - start, drawn_ms: Date.now() - start,
                                      rows: document.querySelectorAll("#trials tbody tr:not([hidden])").length});
    document.body.append(pre);
  };
  wait();
});
</script>"""


def open_in_chromium(page: Path, profile: Path) -> dict:
    """One cold open of the page (a copy with the probe first in <head>): the probe's timings and the wall time."""
    copy = page.with_name("timed.html")
    copy.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--window-size=1280,2000",
             "--run-all-compositor-stages-before-draw", "--dump-dom", copy.as_uri()]  # fmt: skip
    shutil.rmtree(profile, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run(["chromium", *flags], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    found = re.search(r'<pre id="timing">(.*?)</pre>', proc.stdout, re.S)
    if not found:
        raise SystemExit(f"the probe did not report (chromium exit {proc.returncode}): {proc.stderr[-1500:]}")
    return {**json.loads(html.unescape(found[1])), "wall_s": wall}


def main() -> None:
    from launcher import report
    from tests.launcher.test_report import big_sweep, fake_sweep

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not shutil.which("chromium"):
        raise SystemExit("needs Debian's chromium (scripts/setup.sh installs it)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        big = report.build_report(big_sweep(tmp / "big", args.trials))
        built = time.perf_counter() - started
        small = report.build_report(fake_sweep(tmp / "small"))
        for name, page in (("5 trials", small), (f"{args.trials:,} trials", big)):
            runs = [open_in_chromium(page, tmp / "profile") for _ in range(args.repeats)]
            rows.append((name, page.stat().st_size, statistics.median(r["load_ms"] for r in runs) / 1000,
                         statistics.median(r["drawn_ms"] for r in runs) / 1000,
                         statistics.median(r["wall_s"] for r in runs), runs[0]["rows"]))  # fmt: skip
    print(f"machine: {platform.node()} {platform.machine()}, date {date.today()}, chromium headless, cold profile "
          f"each open, median of {args.repeats}; {args.trials:,}-trial report built in {built:.1f} s")  # fmt: skip
    print("| report | MB | load event s | every figure drawn s | chromium process wall s | table rows on the page |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, size, load, drawn, wall, shown in rows:
        print(f"| {name} | {size / 1e6:.1f} | {load:.2f} | {drawn:.2f} | {wall:.2f} | {shown} |")
    print(f"report_{args.trials}_open_s: {rows[-1][3]:.2f}")


if __name__ == "__main__":
    main()
