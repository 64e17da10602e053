"""A fleet in the Sync tab: 101 sources (one failing) and 10,000 runs, in real Chromium.

The status is built by the real `SyncState` (101 configured sources, each sync recorded with
`finish`/`fail` as the service does) and served by test_frontend_views' loopback server
behind TensorBoard's plugin entry page. What a person needs from it: a summary first, the
failing source in the first screen, healthy sources on one line each, when each last moved
data, and a runs table that stays fast (shown a page at a time).
"""

import os
import re

import pytest

from tb_rsync_plugin import config
from tb_rsync_plugin.publishing import report as report_lib
from tb_rsync_plugin.transports import transfer
from tb_rsync_plugin.engine import state as state_lib
from tests.test_frontend_views import (NOW, fake_plugin, make_status, run_fixture,  # noqa: F401
                                       server, source_fixture)

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "test-artifacts")
SOURCES = 101
RUNS_PER_SOURCE = 100
FAILING = f"node{SOURCES - 1:03d}"  # the last one configured


def fleet_status():
    """101 sources synced once with data, then once more with nothing new; the last fails."""
    clock = [NOW - 3000.0]
    names = [f"node{i:03d}" for i in range(SOURCES)]
    state = state_lib.SyncState([config.Source(n, f"{n}:/scratch/logs/") for n in names],
                                lambda source: 30.0, clock=lambda: clock[0])
    state.loader, state.loader_note = "legacy", "Runs are reloaded right after each publish."
    state.logdir = "/home/me/logs"
    for i, name in enumerate(names[:-1]):
        runs = {f"{name}/exp{j:03d}": report_lib.RunUpdate(f"{name}/exp{j:03d}",
                                                           NOW - 600 - i * 60 - j, 10 * j)
                for j in range(RUNS_PER_SOURCE)}
        actions = tuple(report_lib.FileAction(f"exp{j:03d}/events.out.tfevents.1", "append",
                                              4096)
                        for j in range(RUNS_PER_SOURCE))
        report = report_lib.PublishReport(actions=actions, runs=runs, needs_restage=(), errors=())
        state.begin(name)
        state.finish(name, transfer.TransferResult(bytes_received=409600,
                                                   files_transferred=RUNS_PER_SOURCE), report, {})
    clock[0] = NOW - 20
    empty = report_lib.PublishReport(actions=(), runs={}, needs_restage=(), errors=())
    for name in names[:-1]:
        state.begin(name)
        state.finish(name, transfer.TransferResult(), empty, {})
        state.set_schedule(name, 30.0)
    state.begin(FAILING)
    state.fail(FAILING, f"Sync of '{FAILING}' failed: the host is unreachable.",
               "ssh: connect to host node100 port 22: No route to host")
    clock[0] = NOW
    return state.snapshot()


@pytest.fixture
def fleet_page(browser, server, fake_plugin):  # noqa: F811 (fixtures)
    status = fleet_status()
    assert len(status["runs"]) == (SOURCES - 1) * RUNS_PER_SOURCE
    fake_plugin.set_status(status)
    fake_plugin.status_code = 200
    fake_plugin.unhold()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.console_errors = []
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(server + "/entry.html")
    page.wait_for_selector("tr[data-run]", timeout=30000)
    yield page
    assert page.console_errors == []
    context.close()


def test_fleet_summary_first_failing_source_in_the_first_screen(fleet_page):
    page = fleet_page
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "ui-fleet-first-screen.png"))
    got = page.evaluate("""(failing) => {
      const summary = document.querySelector('[data-role=fleet-summary]');
      const row = document.querySelector(`tr[data-source="${failing}"]`);
      const box = row.getBoundingClientRect();
      const healthy = document.querySelector('tr[data-source="node000"]');
      return {
        summary: summary.textContent,
        summaryTop: summary.getBoundingClientRect().top,
        firstRow: document.querySelector('tr[data-source]').getAttribute('data-source'),
        failingBottom: box.bottom, viewport: window.innerHeight,
        failingError: row.querySelector('[data-role=source-error]').textContent,
        healthyHeight: healthy.getBoundingClientRect().height,
        healthyCompact: healthy.classList.contains('rs-compact'),
        healthyResult: healthy.querySelector('[data-cell=result]').innerText,
        healthyChange: healthy.querySelector('[data-role=last-change]').title,
        pageHeight: document.documentElement.scrollHeight,
        runRows: document.querySelectorAll('tr[data-run]').length,
        count: document.querySelector('[data-role=runs-count]').textContent,
        range: document.querySelector('[data-role=page-range]').textContent,
      };
    }""", FAILING)
    print(f"fleet of {SOURCES} sources, {len(range((SOURCES - 1) * RUNS_PER_SOURCE))} runs: "
          f"page {got['pageHeight']} px tall, a healthy row {got['healthyHeight']:.0f} px, "
          f"the failing source's row ends at {got['failingBottom']:.0f} px")
    assert got["summary"].startswith("101 sources: 100 ok 1 failing 0 syncing")
    # The quietest source: node099's newest event is the oldest.
    assert "quietest: node099, newest event 1 h ago" in got["summary"]
    assert got["firstRow"] == FAILING
    assert got["summaryTop"] < got["failingBottom"] <= got["viewport"]
    assert "host is unreachable" in got["failingError"]
    assert got["healthyCompact"] and got["healthyHeight"] < 40
    assert re.fullmatch(r"no new data; last new data 5\d min ago \(100 files, 400 KiB, 100 runs\)",
                        got["healthyResult"]), got["healthyResult"]
    assert got["healthyChange"].startswith("Runs: node000/exp000, node000/exp001")
    assert got["healthyChange"].endswith("and 95 more")
    assert got["runRows"] == 100 and got["count"] == "(10000)"
    assert got["range"] == "1\u2013100 of 10,000"
    assert got["pageHeight"] < 9000


def test_fleet_runs_page_by_page_and_stay_fast(fleet_page, fake_plugin):  # noqa: F811
    page = fleet_page
    stats = "window.__tbRsync.stats"
    first_ms = page.evaluate(f"{stats}.lastRunsRenderMs")
    page.locator("[data-role=pager]").scroll_into_view_if_needed()
    page.screenshot(path=os.path.join(ARTIFACTS, "ui-fleet-runs-pager.png"))
    page.locator("button[data-action=page-next]").click()
    page.wait_for_function("document.querySelector('[data-role=page-range]')?.textContent"
                           "?.startsWith('101\u2013200')")
    assert page.evaluate("document.activeElement.getAttribute('data-key')") == "page-next"
    assert page.locator("tr[data-run]").count() == 100
    # Sorted by name: page two starts at node001 (node000's 100 runs were page one).
    assert page.locator("tr[data-run]").first.get_attribute("data-run") == "node001/exp000"
    # The filter searches all 10,000 runs and starts again at page one.
    page.locator("input[data-role=filter]").fill("node042/exp09")
    page.wait_for_function("document.querySelectorAll('tr[data-run]').length === 10")
    assert page.locator("[data-role=page-range]").count() == 0
    page.locator("input[data-role=filter]").fill("")
    page.wait_for_function("document.querySelector('[data-role=page-range]')?.textContent"
                           "?.startsWith('1\u2013100')")
    # A poll in which one run grew: only that row is rebuilt, if it is on the page.
    with fake_plugin.lock:
        status = fake_plugin.status
    status = dict(status, server_unix_s=status["server_unix_s"] + 1,
                  runs=[dict(r, source_step=123456) if r["run"] == "node000/exp005" else r
                        for r in status["runs"]])
    page.evaluate("() => { for (const tr of document.querySelectorAll('tr[data-run]')) tr.__old = 1; }")
    fake_plugin.set_status(status)
    page.evaluate("window.__tbRsync.poller.poll()")
    page.locator("tr[data-run='node000/exp005'] [data-role=step]", has_text="123456").wait_for()
    kept = page.evaluate("() => [...document.querySelectorAll('tr[data-run]')].filter((t) => t.__old).length")
    assert kept == 99
    poll_ms = page.evaluate(f"{stats}.lastRunsRenderMs")
    print(f"10,000 runs: first page {first_ms:.0f} ms, a poll with one grown run "
          f"{poll_ms:.0f} ms (filter and sort of all runs included)")
    assert first_ms < 3000 and poll_ms < 3000


def test_steps_stay_on_one_line_in_an_800_px_window(browser, server, fake_plugin):  # noqa: F811
    runs = [run_fixture(f"gpu{i}/a-rather-long-experiment-name lr=0.0{i} batch=512 seed={i}",
                        NOW - 30 * i, step=12345678 + i, source=f"gpu{i}",
                        state="waiting", loaded_wall_time=NOW - 600,
                        state_detail="Published; TensorBoard's fast loader shows it at its "
                                     "next reload (every 5 s).") for i in range(5)]
    fake_plugin.set_status(make_status(runs=runs, sources=[source_fixture(f"gpu{i}")
                                                           for i in range(5)]))
    context = browser.new_context(viewport={"width": 800, "height": 900})
    page = context.new_page()
    page.goto(server + "/entry.html")
    page.wait_for_selector("tr[data-run]")
    page.screenshot(path=os.path.join(ARTIFACTS, "ui-800px.png"), full_page=True)
    lines = page.evaluate("""() => [...document.querySelectorAll('[data-role=step]')].map((td) => {
      const range = document.createRange();
      range.selectNodeContents(td);
      return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
    })""")
    # ... and the table fits the window: nothing is cut off at the right.
    overflow = page.evaluate("""() => {
      const table = document.querySelector('table[data-role=runs]');
      return table.getBoundingClientRect().right - table.parentElement.getBoundingClientRect().right;
    }""")
    context.close()
    assert lines == [1] * 5
    assert overflow <= 1, overflow
