"""Charts a user has open in TensorBoard follow the syncs, with no click (issue #11).

A real TensorBoard, a fresh Chromium profile (TensorBoard's "Reload data" is off there), the
Sync tab opened first, then the user switches to Scalars and Time Series. What counts is
what the page itself fetched: the bodies of the dashboards' own data requests.
"""

import json
import time

import pytest

from tests.events import append_scalars, event_file_name
from tests.fixtures_tensorboard import wait_until
from tests.test_ui_browser import open_sync_tab, run_row

pytestmark = pytest.mark.slow

EVENTS = event_file_name()
RUN = "node/job"
# The dashboards' data requests: Scalars (Polymer) and Time Series.
DATA_URLS = ("/data/plugin/scalars/scalars", "/data/plugin/timeseries/timeSeries")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})  # fresh profile
    page = context.new_page()
    page.page_errors = []
    page.on("pageerror", lambda e: page.page_errors.append(str(e)))
    yield page
    context.close()


def max_step(data, run=RUN):
    """The newest step of `run` in a Scalars or Time Series answer, or -1."""
    best = -1
    if isinstance(data, dict):
        for key, value in data.items():
            if key == run and isinstance(value, list):  # scalars_multirun: run -> [[w, s, v]]
                best = max([best] + [p[1] for p in value if isinstance(p, list)] +
                           [p.get("step", -1) for p in value if isinstance(p, dict)])
            else:
                best = max(best, max_step(value, run))
    elif isinstance(data, list):
        best = max([best] + [max_step(item, run) for item in data])
    return best


# Recorded inside the page: TensorBoard's dashboards fetch with XMLHttpRequest (Polymer's
# request manager, Angular's HttpClient). Playwright's "response" events missed some POST
# answers (scalars_multirun) here, so the page keeps its own log of what it received.
RECORD_DATA = """
(() => {
  const parts = %s;
  window.__dataSeen = [];
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function(...args) {
    this.addEventListener('load', () => {
      const url = this.responseURL;  // absolute (the page asks with relative URLs)
      if (parts.some((p) => url.includes(p))) window.__dataSeen.push([url, this.responseText]);
    });
    return send.apply(this, args);
  };
})();
""" % json.dumps(DATA_URLS)


class DataRequests:
    """The newest step of RUN in each data answer the page received, with its URL."""

    def __init__(self, page):
        self.page = page
        page.add_init_script(RECORD_DATA)

    def newest(self, url_part):
        seen = self.page.evaluate("() => window.__dataSeen || []")
        steps = [max_step(json.loads(text)) for url, text in seen if url_part in url and text]
        return max(steps or [-1])


def tab_js(frame, expression):
    return frame.locator("body").evaluate(f"() => {expression}")


def start(tmp_path, tensorboard_server, steps=5):
    remote = tmp_path / "remote"
    (remote / "job").mkdir(parents=True)
    append_scalars(str(remote / "job" / EVENTS), range(steps), wall_time0=time.time() - 60)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = tensorboard_server(logdir, "--rsync_source", f"node={remote}/", "--rsync_interval", "1",
                            "--rsync_staging", tmp_path / "staging", "--reload_interval", "1")
    # A page lists TensorBoard's dashboards when it loads, and TensorBoard 2.10 files one
    # without data under "Inactive" until a reload (which the shown Sync tab holds off): the
    # tests open their page once TensorBoard serves the first sync.
    wait_until(lambda: tb.scalars(RUN), 60, message="TensorBoard serving the first sync")
    return remote, tb


def write(remote, steps):
    append_scalars(str(remote / "job" / EVENTS), steps, wall_time0=time.time() - 30)


def reload_data_ticked(page, tb):
    """Whether TensorBoard's Settings -> Reload data is on in a new page of this browser."""
    later = page.context.new_page()
    try:
        later.goto(tb.url + "/#timeseries")
        later.locator("settings-button button").click()
        reload_box = later.get_by_role("checkbox", name="Reload data")
        reload_box.wait_for(timeout=20000)
        return reload_box.is_checked()
    finally:
        later.close()


@pytest.mark.tb_matrix
def test_open_charts_follow_syncs_without_a_click(tmp_path, tensorboard_server, page):
    pytest.importorskip("tensorboard_data_server")
    remote, tb = start(tmp_path, tensorboard_server)
    requests = DataRequests(page)
    frame, _ = open_sync_tab(page, tb)
    run_row(frame, RUN).locator("[data-role=step]", has_text="4").wait_for(timeout=60000)
    toggle = frame.locator("[data-role=refresh-toggle]")
    assert toggle.is_checked()  # on by default: automatic sync is on

    page.get_by_role("tab", name="scalars").click()
    wait_until(lambda: requests.newest("scalars") >= 4, 60, message="the first chart data")
    write(remote, range(5, 10))
    wait_until(lambda: requests.newest("scalars") >= 9, 60,
               message="the Scalars page fetching step 9 by itself")

    page.get_by_role("tab", name="Time Series", exact=True).click()
    wait_until(lambda: requests.newest("timeSeries") >= 9, 60, message="Time Series data")
    write(remote, range(10, 15))
    wait_until(lambda: requests.newest("timeSeries") >= 14, 60,
               message="the Time Series page fetching step 14 by itself")
    assert tab_js(frame, "window.__tbRsync.refresher.clicks") >= 2
    assert page.page_errors == []


def test_refresh_off_means_no_forced_reloads_and_is_remembered(tmp_path, tensorboard_server,
                                                               page):
    pytest.importorskip("tensorboard_data_server")
    remote, tb = start(tmp_path, tensorboard_server)
    requests = DataRequests(page)
    frame, _ = open_sync_tab(page, tb)
    toggle = frame.locator("[data-role=refresh-toggle]")
    toggle.wait_for(timeout=30000)
    toggle.uncheck()
    note = frame.locator("[data-role=refresh-note]")
    assert "Reload data" in note.text_content()  # says how to get fresh charts instead

    page.get_by_role("tab", name="scalars").click()
    wait_until(lambda: requests.newest("scalars") >= 4, 60, message="the first chart data")
    write(remote, range(5, 10))
    wait_until(lambda: max([p[1] for p in tb.scalars(RUN)] or [-1]) >= 9, 60,
               message="TensorBoard serving step 9")
    # Off, the hidden tab does not even poll. Back on the Sync tab it sees step 9 served,
    # and keeps no wish to refresh (on, it would keep one until the user leaves the tab).
    page.get_by_role("tab", name="Sync", exact=True).click()
    wait_until(lambda: tab_js(frame, "(window.__tbRsync.runs || []).some((r) => "
                                     "r.source_step >= 9 && r.state === 'live')"), 60,
               message="the tab seeing step 9 live")
    assert tab_js(frame, "window.__tbRsync.refresher.dueMs.length") == 0
    page.get_by_role("tab", name="scalars").click()
    ticks = tab_js(frame, "window.__tbRsync.stats.ticks")
    wait_until(lambda: tab_js(frame, "window.__tbRsync.stats.ticks") >= ticks + 3, 60,
               message="three ticks of the hidden tab")
    assert tab_js(frame, "window.__tbRsync.refresher.clicks") == 0
    assert requests.newest("scalars") < 9

    frame, _ = open_sync_tab(page, tb)  # a new page load: the choice was remembered
    frame.locator("[data-role=refresh-toggle]").wait_for(timeout=30000)
    assert not frame.locator("[data-role=refresh-toggle]").is_checked()
    assert page.page_errors == []


def test_refresh_on_turns_on_tensorboards_own_reload_for_later_pages(tmp_path,
                                                                     tensorboard_server, page):
    """A TensorBoard page opened later in the same browser, never showing the Sync tab,
    has its own Settings -> Reload data on; the note beside the option says so."""
    remote, tb = start(tmp_path, tensorboard_server)
    frame, _ = open_sync_tab(page, tb)
    frame.locator("[data-role=reload-data-note]").wait_for(timeout=30000)
    assert "reload by themselves every 30 s" in \
        frame.locator("[data-role=reload-data-note]").text_content()
    assert reload_data_ticked(page, tb)
    # Off again: TensorBoard's setting is put back as it was (off in a fresh profile).
    frame.locator("[data-role=refresh-toggle]").uncheck()
    assert not reload_data_ticked(page, tb)
    assert page.page_errors == []
