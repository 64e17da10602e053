"""The Sync tab in a real TensorBoard, driven by a real headless Chromium.

TensorBoard is started with the installed plugin (its entry point); the test opens
TensorBoard's own page, goes to the Sync tab through TensorBoard's navigation, and works the
tab inside TensorBoard's plugin iframe like a user: click Sync, watch the run appear and its
newest step grow, read a failing source's error. Screenshots go to test-artifacts/ (and one to
docs/sync-tab.png for the README).
"""

import os
import pathlib
import shutil
import tempfile
import time

import pytest
from playwright import sync_api as playwright_sync

from tests.events import append_scalars, event_file_name
from tests.fixtures_s3 import REMOTE
from tests.fixtures_tensorboard import wait_until

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
README_SHOT = os.path.join(ROOT, "docs", "sync-tab.png")
EVENTS = event_file_name()
PLUGIN_FRAME = "iframe[src*='name=rsync']"




@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.page_errors = []
    page.on("pageerror", lambda e: page.page_errors.append(str(e)))
    yield page
    context.close()


def shot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path)
    return path


def open_sync_tab(page, tb):
    """TensorBoard's page, then its "Sync" tab by clicking it; `#rsync` only as a fallback.

    Returns (frame, how) where `how` says which way worked.
    """
    page.goto(tb.url + "/")
    how = "click"
    try:
        tab = page.get_by_role("tab", name="Sync", exact=True)
        tab.wait_for(state="visible", timeout=20000)
        tab.click()
    except playwright_sync.Error:
        how = "hash"
        page.goto(tb.url + "/#rsync")
    page.locator(PLUGIN_FRAME).wait_for(timeout=20000)
    assert page.url.endswith("#rsync"), page.url
    frame = page.frame_locator(PLUGIN_FRAME)
    frame.locator("[data-slot=header] h1").wait_for(timeout=20000)
    return frame, how


def run_row(frame, run):
    return frame.locator(f"tr[data-run='{run}']")


def watch_texts(frame, selector):
    """Record every text an element matching `selector` shows from now on (MutationObserver)."""
    frame.locator("body").evaluate("""(body, selector) => {
      window.__seen = window.__seen || {};
      const seen = window.__seen[selector] = [];
      const note = () => {
        for (const e of body.querySelectorAll(selector)) {
          if (seen[seen.length - 1] !== e.textContent) seen.push(e.textContent);
        }
      };
      note();
      new MutationObserver(note).observe(body, {subtree: true, childList: true, characterData: true});
    }""", selector)


def seen_texts(frame, selector):
    return frame.locator("body").evaluate("(b, s) => window.__seen[s]", selector)


def click_and_check_disabled_at_once(frame, button):
    """Click, and report whether the button was busy (aria-disabled) in the click's own event
    dispatch."""
    frame.locator("body").evaluate("""() => {
      window.__disabledAtClick = null;
      document.addEventListener('click', (e) => {
        const b = e.target.closest('button');
        if (b) window.__disabledAtClick = b.getAttribute('aria-disabled') === 'true';
      }, {once: true});
    }""")
    button.click()
    return frame.locator("body").evaluate("() => window.__disabledAtClick")


def make_remote(root, now):
    """Three runs of different freshness, like a node that trains one job and ran others."""
    runs = {"resnet lr=0.1": (now - 20, 5), "resnet lr=0.01": (now - 1500, 40),
            "vit-b16": (now - 4 * 3600, 30)}
    for name, (newest, count) in runs.items():
        os.makedirs(root / name, exist_ok=True)
        append_scalars(str(root / name / EVENTS), range(count), wall_time0=newest - count + 1)
    return runs


@pytest.fixture
def short_tmp():
    """A short folder (/tmp/tb-sync-XXXX): the paths show in the README screenshot."""
    path = tempfile.mkdtemp(prefix="tb-sync-")
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_sync_tab_in_real_tensorboard(short_tmp, tensorboard_server, page, s3_server):
    tmp_path = short_tmp
    now = time.time()
    remote = tmp_path / "remote"
    make_remote(remote, now)
    bucket = s3_server.new_bucket()  # an rclone source, for its requests per hour
    s3_server.put(bucket, "notes.txt", b"lr=0.1")
    logdir = tmp_path / "logs"
    # A run TensorBoard already has, so it opens on its own dashboards, not on Sync.
    (logdir / "local").mkdir(parents=True)
    append_scalars(str(logdir / "local" / EVENTS), range(3), wall_time0=now - 100)
    tb = tensorboard_server(logdir, "--rsync_source", f"demo={remote}/",
                            "--rsync_source", "bad=/nonexistent/dir/",
                            "--rsync_source", f"cloud=rclone:{REMOTE}:{bucket}/",
                            "--rsync_interval", "0", "--rsync_staging", tmp_path / "staging",
                            "--load_fast=false", env=s3_server.env())

    frame, how = open_sync_tab(page, tb)
    print(f"reached the Sync tab by: {how}")
    assert how == "click"
    frame.locator("[data-role=no-runs]").wait_for()
    assert frame.locator("[data-role=no-runs]").text_content() == \
        "No runs published yet; click Sync."
    assert "reloaded" in frame.locator("[data-role=reload-note]").text_content()
    shot(page, "ui-01-before-sync.png")

    # First sync, by mouse: the button is disabled in the same click; the runs appear.
    run = "demo/resnet lr=0.1"
    watch_texts(frame, "tr[data-source='demo'] [data-role=source-state]")
    demo_button = frame.locator("button[data-source='demo']")
    assert click_and_check_disabled_at_once(frame, demo_button) is True
    run_row(frame, run).locator("[data-role=run-state]", has_text="live").wait_for(timeout=30000)
    assert run_row(frame, run).locator("[data-role=step]").text_content() == "4"
    assert frame.locator("tr[data-run]").count() == 3
    wait_until(lambda: len(tb.scalars(run)) == 5, 10, message="TensorBoard to serve 5 points")
    wait_until(lambda: demo_button.get_attribute("aria-disabled") != "true", 15, message="the Sync button to come back")
    # A local sync of a few KB may finish between two polls: report, do not assert, "syncing".
    print("source states seen:", seen_texts(frame, "tr[data-source='demo'] [data-role=source-state]"))
    shot(page, "ui-02-after-first-sync.png")

    # The job writes more; second sync by keyboard: focus the button, press Enter.
    append_scalars(str(remote / "resnet lr=0.1" / EVENTS), range(5, 15), wall_time0=now - 15)
    watch_texts(frame, f"tr[data-run='{run}'] [data-role=step]")
    demo_button.focus()
    page.keyboard.press("Enter")
    run_row(frame, run).locator("[data-role=step]", has_text="14").wait_for(timeout=30000)
    assert run_row(frame, run).locator("[data-role=run-state]").text_content() == "live"
    assert seen_texts(frame, f"tr[data-run='{run}'] [data-role=step]")[:1] == ["4"]
    wait_until(lambda: len(tb.scalars(run)) == 15, 10, message="TensorBoard to serve 15 points")
    age = run_row(frame, run).locator(".col-age .age")
    assert age.get_attribute("class") == "age fresh-fresh"
    assert age.get_attribute("title").endswith("(local time)")
    stale = run_row(frame, "demo/vit-b16").locator(".col-age .age")
    assert stale.get_attribute("class") == "age fresh-stale"
    assert stale.text_content() == "4 h ago"

    # The bad source: its error as one sentence, stderr behind <details>.
    bad_row = frame.locator("tr[data-source='bad']")
    frame.locator("button[data-source='bad']").click()
    error = bad_row.locator("[data-role=source-error]")
    error.wait_for(timeout=30000)
    assert "no such directory" in error.text_content().lower()
    assert bad_row.locator("[data-role=source-state]").text_content() == "error"
    details = bad_row.locator("details")
    assert details.evaluate("d => d.open") is False
    details.locator("summary").click()
    assert "No such file or directory" in details.locator("pre").text_content()
    # Still open, same node, after more syncs and refreshes (rows are updated cell by cell).
    details.evaluate("d => { window.__details = d; }")
    append_scalars(str(remote / "resnet lr=0.1" / EVENTS), range(15, 20), wall_time0=now - 15)
    frame.locator("button[data-source='demo']").click()
    run_row(frame, run).locator("[data-role=step]", has_text="19").wait_for(timeout=30000)
    wait_until(lambda: demo_button.get_attribute("aria-disabled") != "true", 30, message="the sync to finish")
    page.wait_for_timeout(1500)
    assert details.evaluate("d => d.open && d === window.__details") is True
    assert "1 file" in frame.locator("tr[data-source='demo'] .col-result").text_content()

    # The rclone source: the HTTP requests of its syncs in the last hour, as the storage
    # counted them; the others have no such figure.
    requests = frame.locator("tr[data-source='cloud'] [data-role=api-requests]")
    assert requests.text_content() == "0 requests/h"  # not synced yet
    s3_server.start_recording()
    cloud_button = frame.locator("button[data-source='cloud']")
    cloud_button.click()
    wait_until(lambda: cloud_button.get_attribute("aria-disabled") != "true", 30,
               message="the cloud sync to finish")
    served = s3_server.recorded(bucket)
    wait_until(lambda: requests.text_content() == f"{len(served)} requests/h", 10,
               message=f"the tab to show the {len(served)} requests moto served")
    assert "ended in the last hour" in requests.get_attribute("title")
    assert frame.locator("tr[data-source='demo'] [data-role=api-requests]").count() == 0

    # Filter and sort by age, by keyboard.
    frame.locator("input[data-role=filter]").fill("RESNET")
    wait_until(lambda: frame.locator("tr[data-run]").count() == 2, 5, message="the filter")
    frame.locator("input[data-role=filter]").fill("")
    frame.locator("button[data-sort='age']").focus()
    page.keyboard.press("Enter")
    first = frame.locator("tr[data-run]").first
    wait_until(lambda: first.get_attribute("data-run") == run, 5, message="sort by age")
    assert frame.locator("th:has(button[data-sort='age'])").get_attribute("aria-sort") == \
        "ascending"
    frame.locator("button[data-sort='age']").blur()

    # Away to another dashboard and back: the same iframe, state kept; no polling while away
    # (TensorBoard collapses the iframe), polling resumes at once when back.
    body = frame.locator("body")
    frame.locator("input[data-role=filter]").fill("demo/")
    body.evaluate("() => { const p = window.__tbRsync.poller; p.slowMs = p.fastMs = 200; p.poll(); }")
    page.get_by_role("tab", name="Time Series", exact=True).click()
    wait_until(lambda: body.evaluate("() => window.__tbRsync.poller.sleeping"), 5,
               message="polling to stop while another dashboard shows")
    requests = body.evaluate("() => window.__tbRsync.poller.stats.requests")
    page.wait_for_timeout(1000)
    assert body.evaluate("() => window.__tbRsync.poller.stats.requests") == requests
    page.get_by_role("tab", name="Sync", exact=True).click()
    wait_until(lambda: body.evaluate("() => window.__tbRsync.poller.stats.requests") > requests,
               2, message="polling to resume when the Sync tab shows again")
    body.evaluate("() => { const p = window.__tbRsync.poller; p.slowMs = 5000; p.fastMs = 1000; }")
    assert frame.locator("input[data-role=filter]").input_value() == "demo/"
    assert frame.locator("th:has(button[data-sort='age'])").get_attribute("aria-sort") == \
        "ascending"
    frame.locator("input[data-role=filter]").fill("")
    frame.locator("input[data-role=filter]").blur()

    page.set_viewport_size({"width": 1400, "height": 1000})
    page.mouse.move(700, 990)  # no hover highlight in the picture
    page.wait_for_timeout(500)
    path = shot(page, "ui-03-synced-with-error.png")
    # The README's picture is refreshed only on request, so test runs leave the tree clean:
    # TB_RSYNC_UPDATE_SCREENSHOT=1 python -m pytest tests/test_ui_browser.py
    if os.environ.get("TB_RSYNC_UPDATE_SCREENSHOT") == "1" and os.path.getsize(path) < 300_000:
        shutil.copyfile(path, README_SHOT)

    # Dark mode: TensorBoard starts dark on a dark system, and the tab follows its toggle.
    page.emulate_media(color_scheme="dark")
    page.reload()
    frame, _ = open_sync_tab(page, tb)
    run_row(frame, run).wait_for(timeout=20000)
    assert page.evaluate("() => document.body.classList.contains('dark-mode')")
    html = frame.locator("html")
    wait_until(lambda: html.evaluate("h => h.classList.contains('dark')"), 5,
               message="the tab to turn dark with TensorBoard")
    assert frame.locator("body").evaluate("b => getComputedStyle(b).backgroundColor") == \
        "rgb(48, 48, 48)"
    shot(page, "ui-04-dark-mode.png")
    page.evaluate("() => document.body.classList.remove('dark-mode')")  # what its toggle does
    wait_until(lambda: not html.evaluate("h => h.classList.contains('dark')"), 5,
               message="the tab to turn light with TensorBoard")
    assert frame.locator("body").evaluate("b => getComputedStyle(b).backgroundColor") == \
        "rgb(255, 255, 255)"
    assert page.page_errors == []


@pytest.mark.tb_matrix
def test_sync_tab_fast_loader_waiting_then_live(tmp_path, tensorboard_server, page):
    """With the Rust data server, new data shows at its next reload: "waiting for reload"."""
    pytest.importorskip("tensorboard_data_server")
    now = time.time()
    remote = tmp_path / "remote"
    (remote / "job").mkdir(parents=True)
    append_scalars(str(remote / "job" / EVENTS), range(5), wall_time0=now - 10)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = tensorboard_server(logdir, "--rsync_source", f"node={remote}/",
                            "--rsync_interval", "0", "--rsync_staging", tmp_path / "staging",
                            "--reload_interval", "3")
    frame, how = open_sync_tab(page, tb)
    assert "fast loader" in frame.locator("[data-slot=header]").text_content()
    run = "node/job"
    watch_texts(frame, f"tr[data-run='{run}'] [data-role=run-state]")
    frame.locator("button[data-key='sync-all']").click()
    run_row(frame, run).locator("[data-role=run-state]", has_text="live").wait_for(timeout=30000)
    append_scalars(str(remote / "job" / EVENTS), range(5, 9), wall_time0=now - 5)
    frame.locator("button[data-source='node']").click()
    run_row(frame, run).locator("[data-role=step]", has_text="8").wait_for(timeout=30000)
    run_row(frame, run).locator("[data-role=run-state]", has_text="live").wait_for(timeout=30000)
    states = seen_texts(frame, f"tr[data-run='{run}'] [data-role=run-state]")
    print("run states seen:", states)
    assert states[-1] == "live"
    assert set(states) <= {"live", "waiting for reload"}
    shot(page, "ui-04-fast-loader.png")
    assert page.page_errors == []
