"""B2 in the browser: from a record flushed at the source to its point in the data the open
Scalars page fetched by itself.

Four TensorBoards side by side (as in b2_time_to_visible.py), each with one headless Chromium
page in a fresh profile, on the Scalars dashboard, never clicked:

- plugin, fast loader: `--rsync_interval 1 --reload_interval 1`
- plugin, `--load_fast=false`, `--rsync_interval 1`
- `rsync -a --inplace` every 1 s, TensorBoard's default UI settings (Settings -> "Reload
  data" off, as in a fresh profile)
- the same with "Reload data" on (TensorBoard's `_tb_global_settings` in localStorage;
  its period is 30 s and cannot be shorter)

Every page is opened at `#rsync` (the Sync tab, or nothing for the peers), then switched to
`#scalars` by the URL, as a user would after a look at the Sync tab: TensorBoard creates a
plugin's frame only when its tab is first shown, and the plugin's refresh runs from there.
The page records, in its own JavaScript, when each answer of its scalars data requests
arrived and the newest step in it.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2_time_to_visible as b2  # noqa: E402
import common  # noqa: E402

from tests.events import append_scalars  # noqa: E402
from tests.fixtures_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

POLL_S = 0.1

# In the page: every XMLHttpRequest answer from the scalars plugin, as [arrival ms, newest
# step of RUN]. TensorBoard's dashboards fetch with XMLHttpRequest.
RECORD = """
((run) => {
  window.__scalarsSeen = [];
  const newest = (data) => {
    let best = -1;
    if (Array.isArray(data)) for (const x of data) best = Math.max(best, newest(x));
    else if (data && typeof data === 'object') {
      for (const [key, value] of Object.entries(data)) {
        if (key === run && Array.isArray(value)) {
          for (const p of value) best = Math.max(best, Array.isArray(p) ? p[1] : (p.step ?? -1));
        } else best = Math.max(best, newest(value));
      }
    }
    return best;
  };
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function(...args) {
    this.addEventListener('load', () => {
      if (!this.responseURL.includes('/data/plugin/scalars/scalars')) return;
      try {
        window.__scalarsSeen.push([Date.now(), newest(JSON.parse(this.responseText))]);
      } catch (e) { /* not JSON */ }
    });
    return send.apply(this, args);
  };
})(%r);
"""
RELOAD_ON = "localStorage.setItem('_tb_global_settings', JSON.stringify({autoReload: true}));"


def setups(root):
    plugin = ["--rsync_source", "n1={src}/", "--rsync_staging", "{staging}",
              "--rsync_interval", "1", "--reload_interval", "1"]
    inplace = ["--reload_interval", "1"]
    return [
        (b2.Setup(root, "plugin-fast", "tb-rsync plugin, fast loader", plugin,
                  f"n1/{b2.RUN_DIR}"), False),
        (b2.Setup(root, "plugin-legacy", "tb-rsync plugin, --load_fast=false",
                  plugin + ["--load_fast=false"], f"n1/{b2.RUN_DIR}"), False),
        (b2.Setup(root, "inplace-default", "`rsync --inplace` 1 s, default UI (Reload data off)",
                  inplace, b2.RUN_DIR, loop_options=["--inplace"]), False),
        (b2.Setup(root, "inplace-reload", "`rsync --inplace` 1 s, Reload data on (30 s)",
                  inplace, b2.RUN_DIR, loop_options=["--inplace"]), True),
    ]


def open_scalars(browser, setup, reload_on):
    context = browser.new_context(viewport={"width": 1200, "height": 800})  # fresh profile
    if reload_on:
        context.add_init_script(RELOAD_ON)
    context.add_init_script(RECORD % setup.run)
    page = context.new_page()
    page.goto(setup.tb.url + "/#rsync")
    page.wait_for_selector("app-header-reload button", timeout=60000)
    time.sleep(2)  # the Sync tab's first status answer
    page.evaluate("() => { location.hash = '#scalars'; }")
    return page


def newest_seen(page, since_ms=0):
    """[arrival ms, newest step] of each scalars answer the page got after `since_ms`."""
    return page.evaluate("(since) => window.__scalarsSeen.filter(([t]) => t >= since)", since_ms)


def measure(samples, timeout_s):
    from playwright import sync_api

    with common.work_dir("b2-browser") as root, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pairs = setups(root)
        try:
            for s, _ in pairs:
                s.start()
            for s, _ in pairs:
                s.tb.wait_ready(120)
            deadline = time.monotonic() + 60
            while not all(set(range(5)) <= s.steps() for s, _ in pairs):
                if time.monotonic() > deadline:
                    raise RuntimeError("initial points never showed")
                time.sleep(0.2)
            pages = {s.key: open_scalars(browser, s, reload_on) for s, reload_on in pairs}
            for s, _ in pairs:  # the chart drew the first points
                deadline = time.monotonic() + 60
                while not any(step >= 4 for _, step in newest_seen(pages[s.key])):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{s.key}: the Scalars page never fetched its data")
                    time.sleep(0.2)
            for i in range(samples):
                time.sleep(random.uniform(0.3, 1.3))
                step = 5 + i
                for s, _ in pairs:
                    append_scalars(os.path.join(s.src, b2.EVENTS), [step], wall_time0=time.time())
                flushed_ms = time.time() * 1000  # append_scalars closes the file: flushed
                results = {}
                while len(results) < len(pairs) and time.time() * 1000 < flushed_ms + timeout_s * 1000:
                    for s, _ in pairs:
                        if s.key in results:
                            continue
                        hits = [t for t, got in newest_seen(pages[s.key], flushed_ms) if got >= step]
                        if hits:
                            results[s.key] = (min(hits) - flushed_ms) / 1000
                    time.sleep(POLL_S)
                for s, _ in pairs:
                    if s.key in results:
                        s.latencies.append(results[s.key])
                    else:
                        s.stale += 1
                print(f"  sample {i + 1}/{samples}: " + ", ".join(
                    f"{s.key} {f'{results[s.key]:.2f} s' if s.key in results else 'stale'}"
                    for s, _ in pairs), flush=True)
        finally:
            for s, _ in pairs:
                s.stop()
            browser.close()
    return [s for s, _ in pairs]


def report(all_setups, samples, timeout_s):
    rows = []
    for s in all_setups:
        seen = len(s.latencies)
        rows.append([s.title, f"{seen} of {samples}",
                     common.fmt_s(common.median(s.latencies)) if seen else "stale",
                     common.fmt_s(common.percentile(s.latencies, 90)) if seen else "stale"])
    goals = []
    for s in all_setups[:2]:
        median = common.median(s.latencies) if s.latencies and not s.stale else None
        goals.append([f"{s.title}: median under 3 s, no stale sample",
                      common.fmt_s(median) if median is not None else f"{s.stale} stale",
                      "met" if median is not None and median < 3 else "missed"])
    return (common.table(["setup", "samples in the page's data", "median", "p90"], rows)
            + "\n\n" + common.table(["goal", "measured", ""], goals)
            + "\n\nThe plugin's pages refresh through the Sync tab's \"Refresh TensorBoard after "
            "each sync\" (on by default with automatic sync): it clicks TensorBoard's reload "
            "button when a publish is served, at most every 2.5 s."
            + f"\n\nA sample not in the page's own fetched data within {timeout_s:g} s counts "
            "as stale. Headless Chromium, fresh profile per page, no clicks; four TensorBoards "
            "and four pages share the 2 cores.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 samples instead of 8")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--timeout", type=float, default=40.0,
                        help="seconds after which a sample counts as stale (the peer's "
                             "'Reload data' period is 30 s)")
    args = parser.parse_args(argv)
    samples = args.samples or (3 if args.quick else 8)
    print("B2 in the browser", flush=True)
    all_setups = measure(samples, args.timeout)
    body = report(all_setups, samples, args.timeout)
    print(body)
    common.write_section("B2B", "B2 in the browser: time to the open chart",
                         common.command_line(), body)


if __name__ == "__main__":
    main()
