"""The Sync tab's JavaScript in a real headless Chromium, without TensorBoard.

A loopback static server serves frontend/ twice: at the root for pages that import the pure
modules (views.js, model.js), and under /plugin/rsync/ behind a copy of TensorBoard's
plugin_entry.html, where `status` and `sync` are answered from fixtures this test controls.
"""

import http.server
import json
import os
import re
import threading
import time
import urllib.parse

import pytest


FRONTEND = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "frontend")
HOSTILE = "<img src=x onerror=alert(1)>"
NOW = 1_764_150_000.0

TEST_PAGE = b"""<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/style.css"></head><body>
<script type="module">
import * as views from '/views.js';
import * as model from '/model.js';
import * as refresh from '/refresh.js';
window.views = views; window.model = model; window.refresh = refresh; window.ready = true;
</script></body></html>"""

# TensorBoard keeps the plugin in an iframe and collapses it to height 0 on other dashboards.
HOST_PAGE = b"""<!doctype html><html><body style="margin:0">
<iframe id="tb-plugin" src="/entry.html" style="width:1300px;height:700px;border:0"></iframe>
</body></html>"""

# TensorBoard's /data/plugin_entry.html, with the base href it uses.
ENTRY_PAGE = b"""<!doctype html><head><base href="plugin/rsync/" /></head><body>
<script type="module">import("./index.js").then((m) => void m.render());</script></body>"""


def make_status(runs=None, sources=None, now=NOW, **extra):
    status = {
        "server_unix_s": now,
        "version": "0.1.0",
        "logdir": "/home/me/logs",
        "loader": "legacy",
        "reload_note": "Runs are reloaded right after each publish.",
        "rsync_error": None,
        "interval_s": 30.0,
        "sources": sources if sources is not None else [source_fixture()],
        "runs": runs if runs is not None else [run_fixture("train/a", now - 12)],
    }
    status.update(extra)
    return status


def source_fixture(name="train", state="idle", **extra):
    source = {
        "name": name, "source": "gpu1:/scratch/logs/", "state": state, "interval_s": 30.0,
        "next_sync_unix_s": NOW + 30, "last_start_unix_s": NOW - 40, "last_end_unix_s": NOW - 39,
        "last_ok_unix_s": NOW - 39, "progress": None,
        "last_result": {"bytes_received": 1048576, "bytes_published": 1048000,
                        "files_transferred": 3, "files_published": 3, "runs_updated": 2,
                        "duration_s": 0.8},
        "error": None, "warnings": [],
    }
    source.update(extra)
    return source


def run_fixture(name, wall_time, step=100, state="live", source="train", **extra):
    run = {"run": name, "source": source, "source_wall_time": wall_time, "source_step": step,
           "published_unix_s": wall_time + 1 if wall_time else None,
           "loaded_wall_time": wall_time, "state": state,
           "state_detail": "TensorBoard shows the newest published event.",
           "rewritten_unix_s": None}
    run.update(extra)
    return run


class FakePlugin:
    """What the fake /plugin/rsync/ routes answer, and what they were asked."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = make_status()
        self.status_code = 200
        self.sync_code = 202
        self.sync_requests = []
        self.status_requests = 0
        # While hold_status is set, status requests hang until `release` is set (or 30 s).
        self.hold_status = False
        self.release = threading.Event()

    def hold(self):
        with self.lock:
            self.release.clear()
            self.hold_status = True

    def unhold(self):
        with self.lock:
            self.hold_status = False
            self.release.set()

    def set_status(self, status):
        with self.lock:
            self.status = status


@pytest.fixture(scope="module")
def fake_plugin():
    return FakePlugin()


@pytest.fixture(scope="module")
def server(fake_plugin):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=FRONTEND, **kwargs)

        def log_message(self, *args):
            pass

        def end_headers(self):
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def _send(self, code, body, ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = urllib.parse.urlparse(self.path).path
            if path == "/test.html":
                return self._send(200, TEST_PAGE, "text/html")
            if path == "/entry.html":
                return self._send(200, ENTRY_PAGE, "text/html")
            if path == "/host.html":
                return self._send(200, HOST_PAGE, "text/html")
            if path == "/plugin/rsync/status":
                with fake_plugin.lock:
                    fake_plugin.status_requests += 1
                    held = fake_plugin.hold_status
                    release = fake_plugin.release
                if held:
                    release.wait(30)  # a hung TensorBoard: no answer at all
                with fake_plugin.lock:
                    body = json.dumps(fake_plugin.status).encode()
                    code = fake_plugin.status_code
                try:
                    return self._send(code, body if code == 200 else b"unavailable",
                                      "application/json")
                except OSError:
                    return None  # the browser gave up on a held request
            if path.startswith("/plugin/rsync/"):
                self.path = path[len("/plugin/rsync"):]
            return super().do_GET()

        def do_POST(self):
            path = urllib.parse.urlparse(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if path != "/plugin/rsync/sync":
                return self._send(404, b"{}")
            with fake_plugin.lock:
                held, release = fake_plugin.hold_status, fake_plugin.release
            if held:
                release.wait(30)
            with fake_plugin.lock:
                fake_plugin.sync_requests.append({
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": json.loads(body or b"null"),
                })
                code = fake_plugin.sync_code
            answer = (code, json.dumps({"error": "Unknown source."}).encode()) if code != 202 \
                else (202, json.dumps({"started": ["train"], "joined": []}).encode())
            try:
                return self._send(*answer)
            except OSError:
                return None  # the browser gave up on a held request

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()




@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.dialogs = []
    page.console_errors = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(server + "/test.html")
    page.wait_for_function("window.ready === true")
    yield page
    context.close()


def test_formatters(page):
    got = page.evaluate("""() => {
      const v = window.views;
      return {
        ages: [null, -0.4, 0, 0.9, 12, 59.9, 180, 7200, 3 * 86400, 800 * 86400].map(v.formatAge),
        ins: [30, 0, null, 125].map(v.formatIn),
        bytes: [0, 512, 1536, 12 * 2 ** 20, 3.5 * 2 ** 30, -1, null].map(v.formatBytes),
        rate: [5 * 2 ** 20, null].map(v.formatRate),
        fresh: [0, 10, 299, 300, 3599, 3600, null].map(v.freshnessClass),
        labels: ['live', 'waiting', 'restart_needed', 'error', 'unknown', 'bogus', null]
          .map(v.runStateLabel),
        time: v.formatLocalTime(1764150000),
      };
    }""")
    assert got["ages"] == ["\u2014", "just now", "just now", "just now", "12 s ago", "59 s ago",
                           "3 min ago", "2 h ago", "3 d ago", "2 y ago"]
    assert got["ins"] == ["in 30 s", "due now", "\u2014", "in 2 min"]
    assert got["bytes"] == ["0 B", "512 B", "1.5 KiB", "12 MiB", "3.5 GiB", "\u2014", "\u2014"]
    assert got["rate"] == ["5.0 MiB/s", "\u2014"]
    assert got["fresh"] == ["fresh", "fresh", "fresh", "recent", "recent", "stale", "stale"]
    assert got["labels"] == ["live", "waiting for reload", "restart needed", "error",
                             "\u2014", "\u2014", "\u2014"]
    assert got["time"].startswith("2025-11-26 ") and got["time"].endswith("(local time)")


def test_user_data_is_text_never_markup(page):
    status = make_status(
        runs=[run_fixture(HOSTILE, NOW - 5, source=HOSTILE, state_detail=HOSTILE)],
        sources=[source_fixture(HOSTILE, state="error", source=HOSTILE, error={
            "message": HOSTILE, "details": "<script>alert(2)</script>", "unix_s": NOW - 3})],
        reload_note=HOSTILE, rsync_error=HOSTILE)
    got = page.evaluate("""(st) => {
      const v = window.views;
      document.body.append(v.buildHeader(st), v.buildSourcesTable(st.sources, st.server_unix_s));
      const section = v.buildRunsSection();
      section.querySelector('tbody').append(v.buildRunRows(st.runs, st.server_unix_s));
      document.body.append(section);
      return {
        imgs: document.querySelectorAll('img').length,
        scripts: document.querySelectorAll('body script').length,
        runCell: document.querySelector('.col-run').textContent,
        runAttr: document.querySelector('tr[data-run]').getAttribute('data-run'),
        error: document.querySelector('[data-role=source-error]').textContent,
        details: document.querySelector('.err-details').textContent,
        note: document.querySelector('[data-role=reload-note]').textContent,
      };
    }""", status)
    page.wait_for_timeout(200)  # an onerror handler would have fired by now
    assert got["imgs"] == 0
    assert got["scripts"] == 1  # only the test page's own module script
    assert got["runCell"] == got["runAttr"] == got["error"] == got["note"] == HOSTILE
    assert got["details"] == "<script>alert(2)</script>"
    assert page.dialogs == []
    assert page.console_errors == []


def test_header_shows_a_bad_config_edit(page):
    text = page.evaluate("""(status) => window.views.buildHeader(status, {}).querySelector(
        '[data-role=config-error]').textContent""",
                         make_status(config_error="In config file 's.toml', source #1: ..."))
    assert text.startswith("In config file 's.toml'")


def test_discovery_rules_and_found_sources_are_shown(page):
    rule = "#1 slurm: --me"
    got = page.evaluate("""(status) => {
      const v = window.views;
      const header = v.buildHeader(status, {});
      const table = v.buildSourcesTable(status.sources, status.server_unix_s);
      return {rules: [...header.querySelectorAll('[data-role=discover-rule]')].map(
                (n) => [n.className, n.textContent]),
              found: [...table.querySelectorAll('[data-role=found-by]')].map(
                (n) => n.textContent)};
    }""", make_status(
        sources=[source_fixture("42-gpu1", found_by=rule, leaving=True), source_fixture()],
        discover=[{"rule": rule, "every_s": 30.0, "last_run_unix_s": NOW - 5,
                   "last_ok_unix_s": NOW - 65, "sources": ["42-gpu1"],
                   "error": {"message": HOSTILE, "details": "", "unix_s": NOW - 5}}]))
    assert got["rules"] == [["rs-alert", f"Discovery {rule}: ran 5 s ago, 1 source. {HOSTILE}"]]
    assert got["found"] == [f"found by {rule} \u00b7 left: last sync"]


def test_header_and_empty_states(page):
    got = page.evaluate("""(st) => {
      const v = window.views;
      const header = v.buildHeader(st, {allBusy: false});
      const busy = v.buildHeader(st, {allBusy: true});
      const none = v.buildNoSources();
      const noRuns = document.createElement('tbody');
      noRuns.append(v.buildRunRows([], st.server_unix_s, {total: 0}));
      const noMatch = document.createElement('tbody');
      noMatch.append(v.buildRunRows([], st.server_unix_s, {total: 5, filterText: 'xyz'}));
      const down = v.buildConnection({ok: false, failures: 3, retryInMs: 4000, error: ''});
      return {
        alert: header.querySelector('[data-role=rsync-error]').textContent,
        alertRole: header.querySelector('[data-role=rsync-error]').getAttribute('role'),
        note: header.querySelector('[data-role=reload-note]').textContent,
        syncAll: header.querySelector('button[data-action=sync]').textContent,
        syncAllDisabled: busy.querySelector('button[data-action=sync]').getAttribute('aria-disabled') === 'true',
        none: none.textContent,
        noRuns: noRuns.textContent,
        noMatch: noMatch.textContent,
        down: down.textContent,
        upEmpty: v.buildConnection({ok: true}).textContent,
      };
    }""", make_status(rsync_error="rsync is not installed: install it with your package manager."))
    assert got["alert"].startswith("rsync is not installed") and got["alertRole"] == "alert"
    assert got["note"] == "Runs are reloaded right after each publish."
    assert got["syncAll"] == "Sync all" and got["syncAllDisabled"] is True
    assert "--rsync_source NAME=SOURCE" in got["none"] and "--rsync_config FILE" in got["none"]
    assert "gpu1=gpu1:/scratch/me/logs/" in got["none"]
    assert got["noRuns"] == "No runs published yet; click Sync."
    assert got["noMatch"] == "No runs match \u201cxyz\u201d."
    assert "TensorBoard not reachable" in got["down"] and "retrying in 4 s" in got["down"]
    assert got["upEmpty"] == ""


def test_sources_table(page):
    sources = [
        source_fixture("train", state="syncing", progress={
            "bytes_done": 1048576, "percent": 42, "rate_bytes_s": 5242880.0, "phase": "transfer"}),
        source_fixture("eval", state="idle", interval_s=0, next_sync_unix_s=None),
        source_fixture("bad", state="error", last_result=None, error={
            "message": "The source directory /nonexistent/ does not exist.",
            "details": "rsync: change_dir \"/nonexistent\" failed: No such file or directory (2)\n"
                       "command: rsync -a ...", "unix_s": NOW - 2}),
        source_fixture("waiting", state="queued"),
        source_fixture("clicked", state="idle"),
    ]
    got = page.evaluate("""(sources) => {
      const v = window.views;
      const table = v.buildSourcesTable(sources, %r, {pending: new Set(['clicked'])});
      document.body.append(table);
      const row = (n) => table.querySelector(`tr[data-source="${n}"]`);
      const out = {};
      for (const s of sources) {
        const r = row(s.name);
        const button = r.querySelector('button[data-action=sync]');
        out[s.name] = {
          text: r.textContent,
          state: r.querySelector('[data-role=source-state]').textContent,
          disabled: button.getAttribute('aria-disabled') === 'true',
          button: button.textContent,
          buttonSource: button.getAttribute('data-source'),
          progress: r.querySelector('progress') ? r.querySelector('progress').value : null,
          details: r.querySelector('details') ? r.querySelector('details pre').textContent : null,
          titles: [...r.querySelectorAll('[title]')].map((e) => e.title),
        };
      }
      return out;
    }""" % NOW, sources)
    train = got["train"]
    assert train["disabled"] and train["state"] == "syncing\u2026" and train["progress"] == 42
    assert "1.0 MiB" in train["text"] and "42%" in train["text"] and "5.0 MiB/s" in train["text"]
    assert "in 30 s" in train["text"] and "started 40 s ago" in train["text"]
    assert got["eval"]["disabled"] is False and got["eval"]["buttonSource"] == "eval"
    assert "on request" in got["eval"]["text"] and "39 s ago" in got["eval"]["text"]
    assert "3 files, 1.0 MiB received" in got["eval"]["text"]
    assert any(t.endswith("(local time)") for t in got["eval"]["titles"])
    bad = got["bad"]
    assert bad["state"] == "error" and bad["disabled"] is False
    assert "The source directory /nonexistent/ does not exist." in bad["text"]
    assert bad["details"].startswith("rsync: change_dir")
    assert got["waiting"]["disabled"] and got["waiting"]["button"] == "Queued"
    assert got["clicked"]["disabled"]


def test_sources_table_words_failures_and_timer_syncs(page):
    """A failed source says "failed" and labels its old result; a timed source that is
    syncing says when the next one comes instead of "on request"."""
    sources = [
        source_fixture("bad", state="error", last_end_unix_s=NOW - 3, error={
            "message": "Sync of 'bad' failed: the host is unreachable.", "details": "",
            "unix_s": NOW - 3}),
        source_fixture("timed", state="syncing", next_sync_unix_s=None, interval_s=5.0),
        source_fixture("retry", state="error", next_sync_unix_s=NOW + 40, retrying=True,
                       failures=3, interval_s=5.0),
        source_fixture("idle", state="idle", next_sync_unix_s=NOW + 12, idle_factor=4,
                       interval_s=5.0),
        source_fixture("probed", state="idle", next_sync_unix_s=NOW + 50, interval_s=5.0,
                       probe_mode="probe", probe_detail="Watched by a probe session."),
        source_fixture("fallback", state="idle", next_sync_unix_s=NOW + 5, interval_s=5.0,
                       probe_mode="listing", probe_detail="The probe session stopped."),
    ]
    got = page.evaluate("""(sources) => {
      const table = window.views.buildSourcesTable(sources, %r);
      const cell = (n, c) => table.querySelector(`tr[data-source="${n}"] .col-${c}`).textContent;
      const why = (n) => table.querySelector(`tr[data-source="${n}"] [data-role=probe-mode]`)
        .getAttribute('title');
      return {badLast: cell('bad', 'last'), badResult: cell('bad', 'result'),
              timedNext: cell('timed', 'next'), retryNext: cell('retry', 'next'),
              idleNext: cell('idle', 'next'), probedNext: cell('probed', 'next'),
              probedWhy: why('probed'), fallbackNext: cell('fallback', 'next'),
              fallbackWhy: why('fallback')};
    }""" % NOW, sources)
    assert got["badLast"].startswith("failed 3 s ago") and "last success 39 s ago" in got["badLast"]
    assert got["badResult"].startswith("last success: 3 files, 1.0 MiB received")
    assert got["timedNext"] == "after this syncevery 5 s"
    assert got["retryNext"] == "retrying in 40 severy 5 s"
    assert got["idleNext"] == "in 12 sidle: every 20 s (set: 5 s)"
    # A probed source syncs on change; its timed sync is the slow safety check.
    assert got["probedNext"] == "in 50 son change: probe on the host, every 5 s"
    assert got["probedWhy"] == "Watched by a probe session."
    assert got["fallbackNext"] == "in 5 severy 5 s"
    assert got["fallbackWhy"] == "The probe session stopped."


def test_rclone_sources_show_their_requests_per_hour_and_others_none(page):
    """An rclone source's API calls (sources[].api_requests): a count with what it covers
    on hover, "unknown" (never 0) when not counted; other sources show no such line."""
    sources = [
        source_fixture("cloud", source="rclone:s3:bucket/runs/",
                       api_requests={"last_hour": 1234, "syncs": 120}),
        source_fixture("quiet", source="rclone:s3:bucket/other/",
                       api_requests={"last_hour": None, "syncs": 3}, interval_s=0.0),
        source_fixture("node", api_requests=None),
    ]
    got = page.evaluate("""(sources) => {
      const table = window.views.buildSourcesTable(sources, %r);
      const line = (n) => table.querySelector(`tr[data-source="${n}"] [data-role=api-requests]`);
      const seen = (n) => line(n) && {text: line(n).textContent, title: line(n).title};
      return {cloud: seen('cloud'), quiet: seen('quiet'), node: seen('node')};
    }""" % NOW, sources)
    assert got["cloud"]["text"] == "1,234 requests/h"
    assert got["cloud"]["title"].startswith("HTTP requests rclone made to the storage for "
                                            "the 120 syncs that ended in the last hour "
                                            "(a rolling hour")
    assert got["quiet"]["text"] == "requests/h: unknown"
    assert "rclone_flags" in got["quiet"]["title"]
    assert got["node"] is None


def test_error_details_show_what_went_wrong_first(page, tmp_path):
    """The details of a real failed rsync: its stderr first, then the exit code, then the
    long command (it used to come first and push the stderr below the fold)."""
    from tb_rsync_plugin import config
    from tb_rsync_plugin.transports import rsync
    from tb_rsync_plugin.errors import TransferError
    with pytest.raises(TransferError) as info:
        rsync.run_rsync(config.find_rsync(), config.Source("bad", f"{tmp_path}/missing/"),
                        str(tmp_path / "staging"), str(tmp_path / "tmp"))
    details = info.value.details
    source = source_fixture("bad", state="error", error={
        "message": str(info.value), "details": details, "unix_s": NOW - 2})
    shown = page.evaluate("""(source) => {
      const table = window.views.buildSourcesTable([source], %r);
      return table.querySelector('details pre').textContent;
    }""" % NOW, source)
    stderr = details.split("\nstderr:\n", 1)[1]
    command = details.split("\n", 1)[0]
    assert shown.startswith("stderr:\n" + stderr + "\nexit code: "), shown
    assert shown.endswith("\n" + command) and "rsync" in command
    assert sorted(shown.split("\n")) == sorted(details.split("\n")), "nothing lost"


def test_run_rows_explain_only_what_needs_explaining(page):
    runs = [
        run_fixture("live", NOW - 5),
        run_fixture("behind", NOW - 5, state="waiting", loaded_wall_time=NOW - 17,
                    state_detail="Published; TensorBoard's fast loader shows it at its next "
                                 "reload (every 5 s)."),
        run_fixture("stuck", NOW - 5, state="restart_needed",
                    state_detail="Published; TensorBoard runs with --reload_interval 0 and "
                                 "never reloads: restart it to see this."),
        run_fixture("orphan", NOW - 5, source_failing=True),
    ]
    got = page.evaluate("""(runs) => {
      const tbody = document.createElement('tbody');
      tbody.append(window.views.buildRunRows(runs, %r));
      return Object.fromEntries([...tbody.rows].map((tr) => [tr.getAttribute('data-run'), {
        detail: tr.querySelector('.col-detail').textContent,
        flags: [...tr.querySelectorAll('code.flag')].map((c) => c.textContent),
        badgeTitle: tr.querySelector('[data-role=run-state]').title,
      }]));
    }""" % NOW, runs)
    assert got["live"]["detail"] == ""
    assert got["live"]["badgeTitle"] == "TensorBoard shows the newest published event."
    assert got["behind"]["detail"].endswith("TensorBoard is 12 s behind.")
    assert got["stuck"]["flags"] == ["--reload_interval 0"]
    assert got["stuck"]["detail"].startswith("Published; TensorBoard runs with --reload_interval 0")
    assert got["orphan"]["detail"].startswith("Source train is failing: the source may have "
                                              "newer events")


def test_run_rows_say_how_far_behind_and_where_a_rewrite_went(page):
    runs = [
        run_fixture("steady", NOW - 5, behind_s=3.2, loaded_wall_time=NOW - 8.2),
        run_fixture("rewritten", NOW - 5, rewritten_unix_s=NOW - 60, rewrite={
            "unix_s": NOW - 60, "file": "train/rewritten/events.out.tfevents.1",
            "kept_at": "/cache/quarantine/train/20261126T101500Z/events.out.tfevents.1",
            "by": "another process"}),
    ]
    got = page.evaluate("""(runs) => {
      const tbody = document.createElement('tbody');
      tbody.append(window.views.buildRunRows(runs, %r));
      const text = (run, sel) => {
        const e = tbody.querySelector(`tr[data-run="${run}"] ${sel}`);
        return e ? e.textContent : null;
      };
      return {behind: text('steady', '[data-role=behind]'),
              rewrite: text('rewritten', '[data-role=rewrite]'),
              noBehind: text('rewritten', '[data-role=behind]')};
    }""" % NOW, runs)
    assert got["behind"] == "3 s behind"
    assert got["noBehind"] is None
    assert got["rewrite"] == ("train/rewritten/events.out.tfevents.1 rewritten 1 min ago "
                              "(published by another process); old copy: "
                              "/cache/quarantine/train/20261126T101500Z/events.out.tfevents.1")


def test_chart_refresher_clicks_when_data_moves_at_most_every_few_seconds(page):
    """refresh.js with a fake clock, a fake reload button and a fake storage."""
    got = page.evaluate("""() => {
      const r = window.refresh;
      let now = 0;
      const button = {disabled: false, clicks: 0, click() { this.clicks += 1; }};
      const store = new Map();
      const storage = {getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v),
                       removeItem: (k) => store.delete(k)};
      const make = () => new r.ChartRefresher({now: () => now, find: () => ({button}), storage});
      const tbSettings = () => JSON.parse(store.get(r.TB_SETTINGS_KEY) || 'null');
      const st = (published, loaded, interval = 3, period = 0) => ({interval_s: interval,
        reload_period_s: period, runs: [{run: 'a', published_unix_s: published,
                                        loaded_wall_time: loaded}]});
      const out = {};
      let f = make();
      f.onStatus(st(10, 9));                 // the first answer only sets the marks
      out.first = button.clicks;
      out.tbOn = [tbSettings(), r.savedReloadPeriodS(storage)];  // TensorBoard's own setting
      now = 1000; f.onStatus(st(11, 9));     // published: legacy loader, click at once
      out.published = button.clicks;
      now = 2000; f.onStatus(st(11, 11));    // loaded moved, but only 1 s later
      out.limited = button.clicks;
      now = 3600; f.tick();                  // 2.6 s after the last click
      out.later = button.clicks;
      button.disabled = true;                // the Sync tab is shown: keep the wish
      now = 7000; f.onStatus(st(12, 12));
      out.disabled = [button.clicks, f.dueMs.length > 0];
      button.disabled = false; now = 8000; f.tick();
      out.enabled = button.clicks;
      f.setChoice(false);                    // off: remembered, and no more clicks
      now = 20000; f.onStatus(st(13, 13));
      out.off = [button.clicks, store.get(r.STORAGE_KEY), make().choice];
      out.tbOff = [tbSettings(), r.savedReloadPeriodS(storage)];  // put back as it was
      // A user's own settings are kept; a longer period of theirs too.
      store.set(r.TB_SETTINGS_KEY, JSON.stringify({autoReload: false,
        autoReloadPeriodInMs: 60000, paginationSize: 24}));
      f = make(); f.setChoice(true);         // fast loader: one reload period after
      out.tbMine = [tbSettings(), r.savedReloadPeriodS(storage)];
      // Turned off in TensorBoard's settings afterwards: not turned on again behind the
      // user's back (only when they choose refresh again).
      store.set(r.TB_SETTINGS_KEY, JSON.stringify({autoReload: false}));
      make().onStatus(st(1, 1, 5));
      out.tbRespected = tbSettings().autoReload;
      f.onStatus(st(13, 13, 3, 2)); now = 30000; f.onStatus(st(14, 13, 3, 2));
      out.fastAtOnce = button.clicks;
      out.fastNextInMs = f.nextTickInMs();
      now = 32300; f.tick();
      out.fastAfter = button.clicks;
      store.clear();
      f = make(); f.onStatus(st(1, 1, 0));   // never chosen, no automatic sync: off
      out.defaultNoTimer = f.enabled;
      f.onStatus(st(1, 1, 5));
      out.defaultTimer = f.enabled;
      out.missing = new r.ChartRefresher({now: () => 0, storage,
        find: () => r.findReloadButton(window)}).find().missing;
      return out;
    }""")
    assert got["first"] == 0 and got["published"] == 1
    assert got["limited"] == 1 and got["later"] == 2
    assert got["disabled"] == [2, True] and got["enabled"] == 3
    assert got["off"] == [3, "off", False]
    assert got["tbOn"] == [{"autoReload": True}, 30]
    assert got["tbOff"] == [{}, None]
    assert got["tbMine"] == [{"autoReload": True, "autoReloadPeriodInMs": 60000,
                              "paginationSize": 24}, 60]
    assert got["tbRespected"] is False
    assert got["fastAtOnce"] == 3 and got["fastNextInMs"] == 2300 and got["fastAfter"] == 4
    assert got["defaultNoTimer"] is False and got["defaultTimer"] is True
    assert got["missing"] == "the Sync tab is open on its own page"


def test_idle_poll_follows_the_shortest_sync_interval(page):
    got = page.evaluate("""() => {
      const f = window.model.idlePollMs;
      const st = (...intervals) => ({sources: intervals.map((i) => ({interval_s: i}))});
      return [f(st(0)), f(st(3, 60)), f(st(30)), f(st(1)), f(null)];
    }""")
    assert got == [None, 1500, 5000, 1000, None]


def test_run_rows_states_freshness_and_hover(page):
    runs = [
        run_fixture("fresh", NOW - 12, step=1200),
        run_fixture("recent", NOW - 600, state="waiting"),
        run_fixture("stale", NOW - 7200, state="restart_needed", rewritten_unix_s=NOW - 60,
                    state_detail="The source rewrote events.out.tfevents.1; restart TensorBoard."),
        run_fixture("broken", None, step=None, state="error", published_unix_s=None),
        run_fixture("cli", NOW - 1, state="unknown"),
    ]
    got = page.evaluate("""(runs) => {
      const v = window.views;
      const tbody = document.createElement('tbody');
      tbody.append(v.buildRunRows(runs, %r));
      return [...tbody.rows].map((tr) => ({
        run: tr.getAttribute('data-run'),
        age: tr.querySelector('.col-age').textContent,
        ageClass: (tr.querySelector('.col-age .age') || {}).className || null,
        ageTitle: (tr.querySelector('.col-age .age') || {}).title || null,
        step: tr.querySelector('[data-role=step]').textContent,
        state: tr.querySelector('[data-role=run-state]').textContent,
        stateClass: tr.querySelector('[data-role=run-state]').className,
        text: tr.textContent,
      }));
    }""" % NOW, runs)
    by = {r["run"]: r for r in got}
    assert by["fresh"]["age"] == "12 s ago" and by["fresh"]["ageClass"] == "age fresh-fresh"
    assert by["fresh"]["step"] == "1200" and by["fresh"]["state"] == "live"
    assert by["fresh"]["ageTitle"].endswith("(local time)")
    assert "13 s ago" not in by["fresh"]["text"] and "11 s ago" in by["fresh"]["text"]  # published
    assert by["recent"]["ageClass"] == "age fresh-recent"
    assert by["recent"]["state"] == "waiting for reload"
    assert by["stale"]["ageClass"] == "age fresh-stale" and by["stale"]["state"] == "restart needed"
    assert "restart TensorBoard" in by["stale"]["text"] and "1 min ago" in by["stale"]["text"]
    assert by["broken"]["age"] == "\u2014" and by["broken"]["step"] == "\u2014"
    assert by["broken"]["stateClass"] == "badge run-error"
    assert by["cli"]["state"] == "\u2014"


def test_sort_and_filter_are_pure(page):
    runs = [run_fixture("run_10", NOW - 5), run_fixture("run_2", NOW - 50),
            run_fixture("Run_1", None), run_fixture("eval/x", NOW - 1, source="eval")]
    got = page.evaluate("""(runs) => {
      const v = window.views;
      const names = (rs) => rs.map((r) => r.run);
      return {
        name: names(v.sortRuns(runs, {key: 'name', dir: 'asc'})),
        nameDesc: names(v.sortRuns(runs, {key: 'name', dir: 'desc'})),
        age: names(v.sortRuns(runs, {key: 'age', dir: 'asc'})),
        ageDesc: names(v.sortRuns(runs, {key: 'age', dir: 'desc'})),
        filter: names(v.filterRuns(runs, '  RUN_ ')),
        filterSource: names(v.filterRuns(runs, 'EVAL')),
        untouched: names(runs),
        next: [v.nextSort({key: 'name', dir: 'asc'}, 'name'), v.nextSort({key: 'name', dir: 'desc'}, 'age'),
               v.nextSort({key: 'age', dir: 'asc'}, 'step')],
      };
    }""", runs)
    assert got["name"] == ["eval/x", "Run_1", "run_2", "run_10"]
    assert got["nameDesc"] == ["run_10", "run_2", "Run_1", "eval/x"]
    assert got["age"] == ["eval/x", "run_10", "run_2", "Run_1"]  # newest first, unknown last
    assert got["ageDesc"] == ["run_2", "run_10", "eval/x", "Run_1"]
    assert got["filter"] == ["run_10", "run_2", "Run_1"]
    assert got["filterSource"] == ["eval/x"]
    assert got["untouched"] == ["run_10", "run_2", "Run_1", "eval/x"]
    assert got["next"] == [{"key": "name", "dir": "desc"}, {"key": "age", "dir": "asc"},
                           {"key": "step", "dir": "desc"}]  # the furthest run first


def test_thousand_runs_render_filter_sort(page):
    timings = page.evaluate("""(now) => {
      const v = window.views;
      const runs = [];
      for (let i = 0; i < 1000; i++) {
        runs.push({run: `node${i % 7}/exp ${i} lr=0.${i % 10}`, source: `node${i % 7}`,
          source_wall_time: now - i * 37, source_step: i * 100, published_unix_s: now - i * 37 + 1,
          loaded_wall_time: now - i * 37, state: ['live', 'waiting', 'error'][i % 3],
          state_detail: 'TensorBoard shows the newest published event.', rewritten_unix_s: null});
      }
      const section = v.buildRunsSection();
      document.body.append(section);
      const tbody = section.querySelector('tbody');
      const table = section.querySelector('table');
      const t = (f) => { const t0 = performance.now(); f(); document.body.offsetHeight; return performance.now() - t0; };
      const out = {};
      out.render = t(() => tbody.replaceChildren(v.buildRunRows(runs, now)));
      out.rows = tbody.rows.length;
      out.filter = t(() => tbody.replaceChildren(v.buildRunRows(v.filterRuns(runs, 'EXP 99'), now)));
      out.filtered = tbody.rows.length;
      out.sortAge = t(() => {
        tbody.replaceChildren(v.buildRunRows(v.sortRuns(runs, {key: 'age', dir: 'desc'}), now));
        v.applySort(table, {key: 'age', dir: 'desc'});
      });
      out.first = tbody.rows[0].getAttribute('data-run');
      out.ariaSort = table.querySelector('th[aria-sort]').textContent + ':' +
        table.querySelector('th[aria-sort]').getAttribute('aria-sort');
      out.sortName = t(() => tbody.replaceChildren(v.buildRunRows(v.sortRuns(runs, {key: 'name', dir: 'asc'}), now)));
      out.refreshAges = t(() => v.refreshAges(tbody, now + 30));
      return out;
    }""", NOW)
    print("1,000 runs, ms (DOM build + layout):",
          {k: round(float(timings[k]), 1) for k in ("render", "filter", "sortAge", "sortName",
                                                     "refreshAges")})
    assert timings["rows"] == 1000
    assert timings["filtered"] == 11  # "exp 99" and "exp 990".."exp 999"
    assert timings["first"] == "node5/exp 999 lr=0.9"  # oldest first when age descends
    assert timings["ariaSort"].startswith("Newest event") and timings["ariaSort"].endswith(":descending")
    for key in ("render", "filter", "sortAge", "sortName", "refreshAges"):
        assert timings[key] < 3000, (key, timings[key])


POLLER_HARNESS = """() => {
  const {Poller} = window.model;
  const h = {log: [], timers: [], nowMs: 0, pending: [], statuses: [], errors: []};
  h.poller = new Poller({
    fetch: () => new Promise((resolve, reject) => h.pending.push({resolve, reject})),
    onStatus: (st, info) => h.statuses.push([st.server_unix_s, info.seq]),
    onError: (e) => h.errors.push(e.retryInMs),
    timers: {setTimeout: (f, ms) => { h.timers.push({f, ms}); return h.timers.length; },
             clearTimeout: (id) => { if (h.timers[id - 1]) h.timers[id - 1].cancelled = true; }},
    now: () => h.nowMs,
    isHidden: () => !!h.hidden,
  });
  h.live = () => h.timers.filter((t) => !t.cancelled && !t.fired);
  h.fire = () => { const t = h.live()[0]; t.fired = true; t.f(); return t.ms; };
  h.flush = () => new Promise((r) => setTimeout(r, 0));
  window.h = h;
}"""


def test_poller_single_flight_intervals_backoff_and_stale_drops(page):
    page.evaluate(POLLER_HARNESS)
    got = page.evaluate("""async () => {
      const h = window.h, p = h.poller, out = {};
      const busy = (t) => ({server_unix_s: t, sources: [{state: 'syncing'}]});
      const idle = (t) => ({server_unix_s: t, sources: [{state: 'idle'}]});
      p.start();
      p.poll(); p.poll();                      // asked again while one is in flight
      out.inFlightAfterBurst = h.pending.length;
      h.pending.shift().resolve(idle(10)); await h.flush();
      out.afterFirst = {sent: h.pending.length, timers: h.live().map((t) => t.ms)};  // the queued one, at once
      h.fire(); await h.flush();
      out.inFlightAfterQueued = h.pending.length;
      h.pending.shift().resolve(busy(11)); await h.flush();
      out.busyDelay = h.live().map((t) => t.ms);
      h.fire(); await h.flush();
      h.pending.shift().resolve(idle(12)); await h.flush();
      out.idleDelay = h.live().map((t) => t.ms);
      p.hurry(5000);
      out.hurryDelay = p.nextDelayMs();
      h.nowMs = 6000;
      out.afterHurry = p.nextDelayMs();
      // Network errors back off 1, 2, 4 ... 30 s.
      out.backoff = [];
      for (let i = 0; i < 7; i++) {
        h.fire(); await h.flush();
        h.pending.shift().reject(new Error('network error')); await h.flush();
        out.backoff.push(h.live()[0].ms);
      }
      // A server clock that goes back is an out-of-order answer: dropped.
      h.fire(); await h.flush();
      h.pending.shift().resolve(idle(20)); await h.flush();
      h.fire(); await h.flush();
      h.pending.shift().resolve(idle(15)); await h.flush();
      // stop() while a request is in flight: its answer is dropped.
      h.fire(); await h.flush();
      p.stop();
      h.pending.shift().resolve(idle(30)); await h.flush();
      out.statuses = h.statuses.map((s) => s[0]);
      out.errors = h.errors;
      out.stats = p.stats;
      out.timersAfterStop = h.live().length;
      return out;
    }""")
    assert got["inFlightAfterBurst"] == 1
    assert got["afterFirst"] == {"sent": 0, "timers": [0]}
    assert got["inFlightAfterQueued"] == 1
    assert got["busyDelay"] == [1000]
    assert got["idleDelay"] == [5000]
    assert got["hurryDelay"] == 1000 and got["afterHurry"] == 5000
    assert got["backoff"] == [1000, 2000, 4000, 8000, 16000, 30000, 30000]
    assert got["errors"] == got["backoff"]
    assert got["statuses"] == [10, 11, 12, 20]
    assert got["stats"]["maxInFlight"] == 1
    assert got["stats"]["dropped"] == 2
    assert got["timersAfterStop"] == 0


def test_request_sync_sends_the_api_headers(page, fake_plugin):
    fake_plugin.sync_requests.clear()
    got = page.evaluate("""async () => {
      const m = window.model;
      const one = await m.requestSync('train', {fetchImpl: (u, o) => fetch('/plugin/rsync/' + u, o)});
      const all = await m.requestSync(null, {fetchImpl: (u, o) => fetch('/plugin/rsync/' + u, o)});
      return {one, all};
    }""")
    assert got["one"] == {"started": ["train"], "joined": []}
    bodies = [r["body"] for r in fake_plugin.sync_requests]
    assert bodies == [{"source": "train"}, {}]
    for r in fake_plugin.sync_requests:
        assert r["headers"]["x-tb-rsync"] == "1"
        assert r["headers"]["content-type"] == "application/json"


def test_request_sync_gives_up_on_a_hung_server(page, fake_plugin):
    fake_plugin.hold()
    try:
        got = page.evaluate("""async () => {
          try {
            await window.model.requestSync('train', {timeoutMs: 300,
              fetchImpl: (u, o) => fetch('/plugin/rsync/' + u, o)});
            return 'answered';
          } catch (e) {
            return e.message;
          }
        }""")
    finally:
        fake_plugin.unhold()
    assert got == "Could not ask for a sync: TensorBoard did not answer within 1 s."


# --- index.js end to end, behind a copy of TensorBoard's plugin_entry.html --------------------


@pytest.fixture
def tab(request, browser, server, fake_plugin):
    fake_plugin.set_status(make_status(
        runs=[run_fixture(f"train/run {i}", NOW - 10 * i, step=i) for i in range(30)],
        sources=[source_fixture("train"), source_fixture("bad", state="error", error={
            "message": "The source directory does not exist.",
            "details": "rsync: change_dir failed: No such file or directory (2)", "unix_s": NOW})]))
    fake_plugin.status_code = 200
    fake_plugin.sync_code = 202
    fake_plugin.sync_requests.clear()
    fake_plugin.unhold()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.console_errors = []
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(server + getattr(request, "param", "/entry.html"))
    if page.url.endswith("/entry.html"):
        page.wait_for_selector("tr[data-run='train/run 0']")
    yield page
    fake_plugin.unhold()
    assert page.console_errors == []
    context.close()


def bump_status(fake_plugin, dt=1.0, **changes):
    with fake_plugin.lock:
        status = json.loads(json.dumps(fake_plugin.status))
    status["server_unix_s"] += dt
    status.update(changes)
    fake_plugin.set_status(status)
    return status


def busy(button):
    """A Sync button in flight: aria-disabled (it keeps focus), its clicks ignored."""
    return button.get_attribute("aria-disabled") == "true"


def test_tab_sync_click_disables_at_once_and_posts(tab, fake_plugin):
    button = tab.locator("button[data-source='train']")
    assert not busy(button)
    # The server will report the sync on the next status answer.
    status = bump_status(fake_plugin)
    status["sources"][0]["state"] = "syncing"
    status["sources"][0]["progress"] = {"bytes_done": 10, "percent": 5, "rate_bytes_s": 100.0,
                                        "phase": "transfer"}
    fake_plugin.set_status(status)
    button.click()
    assert busy(tab.locator("button[data-source='train']"))
    tab.wait_for_function("document.querySelector(\"tr[data-source='train'] progress\")")
    assert fake_plugin.sync_requests[-1]["body"] == {"source": "train"}
    assert fake_plugin.sync_requests[-1]["headers"]["x-tb-rsync"] == "1"
    # Done: the button comes back, the result shows.
    status = bump_status(fake_plugin)
    status["sources"][0].update(state="idle", progress=None)
    fake_plugin.set_status(status)
    tab.wait_for_function("document.querySelector(\"button[data-source='train']\").getAttribute('aria-disabled') !== 'true'",
                          timeout=5000)
    # Sync all posts {}.
    tab.locator("button[data-key='sync-all']").click()
    tab.wait_for_function("window.__tbRsync.pending.size === 0", timeout=10000)
    assert fake_plugin.sync_requests[-1]["body"] == {}


def test_tab_refused_sync_says_why(tab, fake_plugin):
    fake_plugin.sync_code = 404
    tab.locator("button[data-source='bad']").click()
    message = tab.locator("[data-role=message]")
    message.wait_for()
    assert "refused (HTTP 404)" in message.text_content()
    assert "Unknown source." in message.text_content()
    assert not busy(tab.locator("button[data-source='bad']"))


def test_tab_filter_sort_details_survive_refreshes(tab, fake_plugin):
    app = "window.__tbRsync"
    tab.locator("details summary").click()
    filt = tab.locator("input[data-role=filter]")
    filt.click()
    filt.type("RUN 2")
    tab.wait_for_function("document.querySelectorAll('tr[data-run]').length === 11")
    tab.evaluate("() => document.querySelector('input[data-role=filter]').setSelectionRange(1, 3)")
    renders = tab.evaluate(f"{app}.stats.runsRenders")
    updates = tab.evaluate(f"{app}.stats.statusUpdates")
    # Same runs, newer clock: polled, ages refreshed, but the tbody is not rebuilt.
    bump_status(fake_plugin, dt=5)
    tab.wait_for_function(f"{app}.stats.statusUpdates > {updates}", timeout=10000)
    assert tab.evaluate(f"{app}.stats.runsRenders") == renders
    # New data: rebuilt, while the filter keeps focus, text and selection.
    status = bump_status(fake_plugin, dt=1)
    status["runs"].append(run_fixture("train/run 2000", NOW, step=7))
    fake_plugin.set_status(status)
    tab.wait_for_function("document.querySelectorAll('tr[data-run]').length === 12", timeout=10000)
    state = tab.evaluate("""() => {
      const f = document.querySelector('input[data-role=filter]');
      return {focused: document.activeElement === f, value: f.value,
              sel: [f.selectionStart, f.selectionEnd],
              open: document.querySelector('details').open,
              count: document.querySelector('[data-role=runs-count]').textContent};
    }""")
    assert state == {"focused": True, "value": "RUN 2", "sel": [1, 3], "open": True,
                     "count": "(12 of 31)"}
    # Keyboard sort: Tab to the "Newest event" header button and press Enter twice.
    tab.locator("button[data-sort='age']").focus()
    tab.keyboard.press("Enter")
    tab.keyboard.press("Enter")
    th = tab.locator("th:has(button[data-sort='age'])")
    assert th.get_attribute("aria-sort") == "descending"
    assert tab.locator("tr[data-run]").first.get_attribute("data-run") == "train/run 29"
    # Survives a reload of the page (sessionStorage).
    tab.reload()
    tab.wait_for_selector("tr[data-run]")
    assert tab.locator("input[data-role=filter]").input_value() == "RUN 2"
    assert tab.locator("th:has(button[data-sort='age'])").get_attribute("aria-sort") == "descending"


def test_tab_unreachable_then_back(tab, fake_plugin):
    tab.route("**/plugin/rsync/status", lambda route: route.abort())
    banner = tab.locator("[data-role=connection]", has_text="TensorBoard not reachable")
    banner.wait_for(timeout=10000)
    # The countdown ticks every second: "retrying in N s", or "retrying now" at zero.
    assert re.search(r"retrying (in \d+ s|now)", banner.text_content())
    assert tab.locator("tr[data-run]").count() == 30  # last known data stays on screen
    # ... greyed out, and Sync does nothing while TensorBoard cannot be reached.
    assert tab.locator(".rs-offline .table-wrap").count() == 2
    requests = len(fake_plugin.sync_requests)
    tab.locator("button[data-action=sync][data-source='train']").click(force=True)
    tab.wait_for_timeout(300)
    assert len(fake_plugin.sync_requests) == requests
    tab.unroute("**/plugin/rsync/status")
    tab.locator("button[data-action=retry]").click()
    banner.wait_for(state="detached", timeout=10000)
    assert tab.locator(".rs-offline").count() == 0


def test_tab_no_sources_explains_configuration(tab, fake_plugin):
    fake_plugin.set_status(make_status(runs=[], sources=[]))
    tab.locator("[data-role=no-sources]").wait_for(timeout=10000)
    assert "--rsync_source NAME=SOURCE" in tab.locator("[data-role=no-sources]").text_content()


def test_tab_thousand_runs_poll_smoothly(tab, fake_plugin):
    runs = [run_fixture(f"node{i % 7}/exp {i}", NOW - 37 * i, step=i) for i in range(1000)]
    fake_plugin.set_status(make_status(runs=runs, now=NOW + 1))
    # Shown a page (views.RUNS_PAGE_SIZE) at a time; tests/test_ui_fleet.py pages through.
    tab.wait_for_function("document.querySelector('[data-role=runs-count]').textContent "
                          "=== '(1000)'", timeout=15000)
    assert tab.locator("tr[data-run]").count() == 100
    first_ms = tab.evaluate("window.__tbRsync.stats.lastRunsRenderMs")
    # A poll where one run grew: that row is replaced, the other 99 stay as they were.
    tab.evaluate("() => { for (const tr of document.querySelectorAll('tr[data-run]')) tr.__old = 1; }")
    runs[7] = dict(runs[7], source_step=123456)
    fake_plugin.set_status(make_status(runs=runs, now=NOW + 2))
    tab.evaluate("window.__tbRsync.poller.poll()")
    tab.locator("tr[data-run='node0/exp 7'] [data-role=step]", has_text="123456").wait_for()
    kept = tab.evaluate("() => [...document.querySelectorAll('tr[data-run]')].filter((t) => t.__old).length")
    assert kept == 99
    assert tab.evaluate("window.__tbRsync.stats.lastRunsRender") == "rows"
    row_ms = tab.evaluate("window.__tbRsync.stats.lastRunsRenderMs")
    filt = tab.locator("input[data-role=filter]")
    t0 = time.monotonic()
    filt.fill("exp 99")
    tab.wait_for_function("document.querySelectorAll('tr[data-run]').length === 11")
    filter_ms = (time.monotonic() - t0) * 1000
    print(f"index.js with 1,000 runs: tbody build {first_ms:.0f} ms, one changed row "
          f"{row_ms:.1f} ms, filter round trip {filter_ms:.0f} ms")
    assert first_ms < 3000 and filter_ms < 5000


def test_tab_keyboard_sync_keeps_focus_on_the_button(tab, fake_plugin):
    status = bump_status(fake_plugin)
    status["sources"][0]["state"] = "syncing"
    fake_plugin.set_status(status)
    tab.locator("button[data-source='train']").focus()
    tab.keyboard.press("Enter")
    tab.wait_for_function("window.__tbRsync.pending.size === 0", timeout=10000)
    assert busy(tab.locator("button[data-source='train']"))  # the server says syncing
    # Focus stayed on the busy button all along: Tab goes on from it.
    assert tab.evaluate("document.activeElement.getAttribute('data-key')") == "sync:train"
    status = bump_status(fake_plugin)
    status["sources"][0]["state"] = "idle"
    fake_plugin.set_status(status)
    tab.wait_for_function("document.querySelector(\"button[data-source='train']\").getAttribute('aria-disabled') !== 'true'",
                          timeout=10000)
    assert tab.evaluate("document.activeElement.getAttribute('data-key')") == "sync:train"


# --- review fixes: hung requests, row-by-row source updates, live regions, hidden tab, phases --


def test_poller_gives_up_on_a_hung_request_and_sleeps_while_hidden(page):
    page.evaluate(POLLER_HARNESS)
    got = page.evaluate("""async () => {
      const h = window.h, p = h.poller, out = {};
      const signals = [];
      p.fetch = (opts) => { signals.push(opts && opts.signal);
        return new Promise((resolve, reject) => h.pending.push({resolve, reject})); };
      p.start();
      out.timeoutTimer = h.live().map((t) => t.ms);     // only the request timeout is armed
      h.fire(); await h.flush();                        // 10 s pass: no answer
      out.aborted = signals[0].aborted;
      out.errors = h.errors.slice();
      out.retry = h.live().map((t) => t.ms);
      h.fire(); await h.flush();                        // the retry goes out
      out.sent = signals.length;
      h.pending[1].resolve({server_unix_s: 5, sources: []}); await h.flush();
      h.pending[0].resolve({server_unix_s: 4, sources: []}); await h.flush();  // too late
      out.statuses = h.statuses.map((s) => s[0]);
      // Hidden: an answer schedules nothing; poll() (tab shown again) asks at once.
      h.hidden = true;
      h.fire(); await h.flush();
      out.sentWhileHidden = signals.length;             // the timer fired, but hidden: no request
      out.sleeping = p.sleeping;
      out.timersWhileHidden = h.live().length;
      h.hidden = false;
      p.poll();
      out.sentWhenShown = signals.length;
      h.pending[2].resolve({server_unix_s: 6, sources: []}); await h.flush();
      h.hidden = true;
      h.fire(); await h.flush();                        // answer while visible -> timer; hidden now
      out.afterAnswerHidden = {live: h.live().length, sleeping: p.sleeping, sent: signals.length};
      p.stop();
      return out;
    }""")
    assert got["timeoutTimer"] == [10000]
    assert got["aborted"] is True
    assert got["errors"] == [1000]
    assert got["retry"] == [1000]
    assert got["sent"] == 2
    assert got["statuses"] == [5]
    assert got["sentWhileHidden"] == 2 and got["sleeping"] is True
    assert got["timersWhileHidden"] == 0
    assert got["sentWhenShown"] == 3
    assert got["afterAnswerHidden"] == {"live": 0, "sleeping": True, "sent": 3}


def test_poller_aborts_a_request_the_server_holds_open(page, fake_plugin):
    """A status request TensorBoard never answers: aborted, reported as unreachable, retried."""
    fake_plugin.hold()
    try:
        page.evaluate("""() => {
          const m = window.model;
          window.seen = {errors: [], statuses: []};
          window.p = new m.Poller({
            fetch: (o) => m.fetchStatus({signal: o.signal,
              fetchImpl: (u, opts) => fetch('/plugin/rsync/' + u, opts)}),
            onStatus: (st) => window.seen.statuses.push(st.server_unix_s),
            onError: (e) => window.seen.errors.push(e),
            timeoutMs: 400, isHidden: () => false,
          });
          window.p.start();
        }""")
        page.wait_for_function("window.seen.errors.length >= 1", timeout=5000)
        err = page.evaluate("window.seen.errors[0]")
        assert err["status"] == 0 and err["failures"] == 1 and err["retryInMs"] == 1000
        assert "no answer within" in err["error"]
    finally:
        fake_plugin.unhold()
    page.wait_for_function("window.seen.statuses.length >= 1", timeout=5000)
    assert page.evaluate("window.p.stats.maxInFlight") == 1
    page.evaluate("window.p.stop()")


def test_tab_hung_status_request_shows_not_reachable(tab, fake_plugin):
    tab.evaluate("() => { window.__tbRsync.poller.timeoutMs = 500; }")
    fake_plugin.hold()
    tab.evaluate("window.__tbRsync.poller.poll()")
    banner = tab.locator("[data-role=connection]", has_text="TensorBoard not reachable")
    banner.wait_for(timeout=5000)
    assert "HTTP" not in banner.text_content() and "retrying" in banner.text_content()
    fake_plugin.unhold()
    tab.locator("button[data-action=retry]").click()
    tab.wait_for_function("window.__tbRsync.conn.ok === true", timeout=10000)
    assert "reachable again" in tab.locator("[data-role=announcer]").text_content()


def test_phase_labels_and_progress(page):
    got = page.evaluate("""(now) => {
      const v = window.views;
      const phases = ['connecting', 'events', 'files', 'restage', 'reloading', 'transfer', null];
      const sources = phases.map((phase, i) => ({name: `s${i}`, source: 'x:/y/', state: 'syncing',
        interval_s: 0, progress: {bytes_done: phase === 'connecting' ? 0 : 2048, percent: 40,
          rate_bytes_s: 1024, phase}, last_result: null, error: null, warnings: []}));
      const table = v.buildSourcesTable(sources, now);
      return {
        labels: phases.map(v.phaseLabel),
        texts: [...table.querySelectorAll('[data-role=progress-text]')].map((e) => e.textContent),
        determinate: [...table.querySelectorAll('progress')].map((b) => b.hasAttribute('value')),
      };
    }""", NOW)
    assert got["labels"] == ["connecting\u2026", "appending event files",
                             "copying other files", "re-fetching rewritten files",
                             "waiting for TensorBoard to reload", "transfer", ""]
    t = got["texts"]
    assert t[0] == "connecting\u2026"  # no "0 B · 0%" before anything moved
    assert t[1] == "appending event files \u00b7 2.0 KiB \u00b7 40% \u00b7 1.0 KiB/s"
    assert t[2].startswith("copying other files \u00b7 ")
    assert t[3].startswith("re-fetching rewritten files \u00b7 ")
    assert t[4] == "waiting for TensorBoard to reload \u00b7 2.0 KiB"
    assert t[5].startswith("transfer \u00b7 2.0 KiB")  # unknown phase: shown as sent
    assert t[6] == "2.0 KiB \u00b7 40% \u00b7 1.0 KiB/s"
    assert got["determinate"] == [False, True, True, True, False, True, True]


def test_connection_notice_and_announcements_are_polite(page):
    got = page.evaluate("""(now) => {
      const v = window.views;
      const a = v.buildConnection({ok: false, failures: 1, retryInMs: 1000, error: ''}, now);
      const b = v.buildConnection({ok: false, failures: 2, retryInMs: 2000, error: ''}, now);
      const live = a.querySelector('[data-role=conn-live]');
      const prev = [{name: 'train', state: 'syncing'}, {name: 'bad', state: 'idle'},
                    {name: 'q', state: 'idle'}, {name: 'e', state: 'error', error: {message: 'A.'}}];
      const next = [{name: 'train', state: 'idle'}, {name: 'bad', state: 'error',
                     error: {message: 'No such directory.'}}, {name: 'q', state: 'syncing'},
                    {name: 'e', state: 'error', error: {message: 'B.'}}, {name: 'new', state: 'idle'}];
      return {
        alerts: a.querySelectorAll('[role=alert]').length + b.querySelectorAll('[role=alert]').length,
        liveRole: live.getAttribute('role'), liveAria: live.getAttribute('aria-live'),
        liveA: live.textContent,
        liveB: b.querySelector('[data-role=conn-live]').textContent,
        countdownInLive: !!live.querySelector('[data-age-unix]'),
        textA: a.textContent,
        withError: v.connectionMessage({ok: false, error: 'HTTP 503: unavailable'}),
        first: v.sourceAnnouncements(null, next),
        news: v.sourceAnnouncements(prev, next),
      };
    }""", NOW)
    assert got["alerts"] == 0
    assert got["liveRole"] == "status" and got["liveAria"] == "polite"
    assert got["liveA"] == got["liveB"] == "TensorBoard not reachable."
    assert got["countdownInLive"] is False
    assert "retrying in 1 s" in got["textA"]
    assert got["withError"] == "TensorBoard not reachable (HTTP 503: unavailable)."
    assert got["first"] == []
    assert got["news"] == ["train: sync finished", "bad: error: No such directory.",
                           "q: syncing", "e: error: B."]


def test_tab_unreachable_notice_is_announced_once(tab, fake_plugin):
    tab.route("**/plugin/rsync/status", lambda route: route.abort())
    tab.evaluate("window.__tbRsync.poller.poll()")
    tab.locator("[data-role=conn-live]", has_text="TensorBoard not reachable").wait_for(timeout=5000)
    tab.evaluate("""() => {
      const live = document.querySelector('[data-role=conn-live]');
      window.__live = live;
      window.__liveMutations = 0;
      new MutationObserver((m) => { window.__liveMutations += m.length; })
        .observe(live, {subtree: true, childList: true, characterData: true, attributes: true});
      window.__countdowns = new Set();
      // The countdown goes away once the connection is back: sample it only while shown.
      setInterval(() => {
        const countdown = document.querySelector('[data-age-mode=retry]');
        if (countdown) window.__countdowns.add(countdown.textContent);
      }, 100);
    }""")
    tab.wait_for_function("window.__tbRsync.poller.failures >= 3", timeout=10000)
    got = tab.evaluate("""() => ({
      same: document.querySelector('[data-role=conn-live]') === window.__live,
      connected: window.__live.isConnected,
      mutations: window.__liveMutations,
      alerts: document.querySelectorAll('[role=alert]').length,
      countdowns: [...window.__countdowns],
    })""")
    assert got["same"] and got["connected"]
    assert got["mutations"] == 0  # new failures and countdown ticks: nothing re-announced
    assert got["alerts"] == 0
    assert len(got["countdowns"]) >= 2  # the countdown did change meanwhile, visibly
    tab.unroute("**/plugin/rsync/status")
    tab.locator("button[data-action=retry]").click()
    tab.wait_for_function("window.__live.textContent === ''", timeout=10000)


def test_tab_source_progress_keeps_error_details_selection(tab, fake_plugin):
    """Another source's progress changes every poll: the open error <pre> is left alone."""
    tab.locator("tr[data-source='bad'] details summary").click()
    tab.evaluate("""() => {
      const pre = document.querySelector("tr[data-source='bad'] pre");
      const range = document.createRange();
      range.setStart(pre.firstChild, 0);
      range.setEnd(pre.firstChild, 14);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      window.__pre = pre;
      window.__badCells = [...document.querySelector("tr[data-source='bad']").cells];
      window.__trainRow = document.querySelector("tr[data-source='train']");
      window.__trainName = window.__trainRow.cells[0];
    }""")
    assert tab.evaluate("getSelection().toString()") == "rsync: change_"
    texts = []
    for i, (phase, percent) in enumerate([("connecting", 0), ("events", 30), ("files", 60),
                                          ("restage", 80), ("reloading", 100)]):
        status = bump_status(fake_plugin)
        status["sources"][0].update(state="syncing", progress={
            "bytes_done": 1000 * i, "percent": percent, "rate_bytes_s": 10.0, "phase": phase})
        fake_plugin.set_status(status)
        # onStatus renders synchronously: once the answer is in, the row is up to date.
        tab.wait_for_function("(ph) => { const s = window.__tbRsync.status.sources[0];"
                              " return s.progress && s.progress.phase === ph; }",
                              arg=phase, timeout=5000)
        texts.append(tab.locator("tr[data-source='train'] .progress").text_content())
    status = bump_status(fake_plugin)
    status["sources"][0].update(state="idle", progress=None)
    fake_plugin.set_status(status)
    tab.wait_for_function("document.querySelector(\"button[data-source='train']\").getAttribute('aria-disabled') !== 'true'",
                          timeout=5000)
    got = tab.evaluate("""() => ({
      selection: getSelection().toString(),
      samePre: document.querySelector("tr[data-source='bad'] pre") === window.__pre,
      open: window.__pre.closest('details').open,
      badCellsKept: [...document.querySelector("tr[data-source='bad']").cells]
        .every((td, i) => td === window.__badCells[i]),
      sameTrainRow: document.querySelector("tr[data-source='train']") === window.__trainRow,
      sameTrainName: document.querySelector("tr[data-source='train']").cells[0] === window.__trainName,
      order: [...document.querySelectorAll('tr[data-source]')].map((tr) => tr.getAttribute('data-source')),
      announced: (document.querySelector('[data-role=announcer]') || {}).textContent,
    })""")
    print("progress texts seen:", texts)
    assert got == {"selection": "rsync: change_", "samePre": True, "open": True,
                   "badCellsKept": True, "sameTrainRow": True, "sameTrainName": True,
                   "order": ["bad", "train"], "announced": "train: sync finished"}
    assert "waiting for TensorBoard to reload" in texts[-1]


@pytest.mark.parametrize("tab", ["/host.html"], indirect=True)
def test_tab_stops_polling_while_tensorboard_shows_another_dashboard(tab, fake_plugin):
    page = tab
    frame = None
    deadline = time.monotonic() + 10
    while frame is None and time.monotonic() < deadline:
        frame = next((f for f in page.frames if f.url.endswith("/entry.html")), None)
        page.wait_for_timeout(50)
    frame.wait_for_selector("tr[data-run='train/run 0']")
    # The chart refresh (on by default with automatic sync) needs polls while hidden: off.
    frame.uncheck("[data-role=refresh-toggle]")
    # Poll every 200 ms when visible, so a hidden tab that still polled would show at once.
    frame.evaluate("""() => { const p = window.__tbRsync.poller;
                              p.slowMs = p.fastMs = 200; p.poll(); }""")
    frame.wait_for_function("window.__tbRsync.poller.stats.requests >= 4", timeout=5000)
    page.evaluate("document.getElementById('tb-plugin').style.height = '0px'")
    frame.wait_for_function("window.__tbRsync.poller.sleeping === true", timeout=3000)
    before = frame.evaluate("window.__tbRsync.poller.stats.requests")
    server_before = fake_plugin.status_requests
    page.wait_for_timeout(1500)
    assert frame.evaluate("window.__tbRsync.poller.stats.requests") == before
    assert fake_plugin.status_requests == server_before
    t0 = time.monotonic()
    page.evaluate("document.getElementById('tb-plugin').style.height = '700px'")
    frame.wait_for_function(f"window.__tbRsync.poller.stats.requests > {before}", timeout=3000)
    assert time.monotonic() - t0 < 1.5  # at once, not after a slow-poll delay
    frame.wait_for_function(f"window.__tbRsync.poller.stats.requests > {before + 2}", timeout=3000)
