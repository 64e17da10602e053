// The Sync tab: wires model.js (status polling, sync requests) to views.js (pure builders).
//
// TensorBoard loads this module inside its plugin iframe (base href "plugin/rsync/") and
// calls render(). UI state that must survive refreshes lives here: sort, filter (also kept in
// sessionStorage), open <details>, buttons clicked but not yet confirmed by the server.
// Each part of the page is rebuilt only when its data changed; ages tick in place. Source
// rows are updated by name, cell by cell (an open error <details> keeps its selection while
// another source's progress moves). Polling sleeps while nobody can see the tab, unless the
// chart refresh (refresh.js) needs it: then it goes on while the user looks at a dashboard.

import {keepFocus, replaceSlot} from './focus.js';
import {Poller, idlePollMs, pageHidden, requestSync} from './model.js';
import {ChartRefresher, savedReloadPeriodS} from './refresh.js';
import {ensureStylesheet, followTheme} from './theme.js';
import * as views from './views.js';

const STORAGE_KEY = 'tb-rsync.ui.v1';
const TICK_MS = 1000;

function loadUiState() {
  try {
    const saved = JSON.parse(window.sessionStorage.getItem(STORAGE_KEY) || '{}');
    const sort = saved.sort && typeof saved.sort.key === 'string' ?
      {key: saved.sort.key, dir: saved.sort.dir === 'desc' ? 'desc' : 'asc'} : views.DEFAULT_SORT;
    return {sort, filter: typeof saved.filter === 'string' ? saved.filter : ''};
  } catch (e) {
    return {sort: views.DEFAULT_SORT, filter: ''};
  }
}

/** A busy (aria-disabled) or disabled button: clicks on it do nothing. */
function ignoresClicks(button) {
  return button.disabled || button.getAttribute('aria-disabled') === 'true';
}

class SyncTab {
  constructor(root) {
    this.root = root;
    this.status = null;
    this.receivedAtMs = 0;
    this.conn = {ok: true};
    this.message = null;
    // Sync requests not yet reflected by a status answer: name ('*' = all) -> the time the
    // POST answered (Infinity while it is in flight). A status requested after that time
    // shows the sync itself (syncing/queued) or its result, so the entry can go.
    this.pending = new Map();
    this.openDetails = new Set();
    this.sourceRows = new Map(); // name -> {tr, keys: {cell name: key}}
    this.prevSources = null; // for announcing state changes
    this.hidden = false;
    this.focusMemo = {key: null};
    this.keys = {};
    this.runsJson = '';
    this.stats = {runsRenders: 0, lastRunsRenderMs: 0, statusUpdates: 0, ticks: 0};
    Object.assign(this, loadUiState());

    this.refresher = new ChartRefresher();
    this.refreshTimer = null;
    this.headerSlot = views.el('div', {attrs: {'data-slot': 'header'}});
    this.refreshSlot = views.el('div', {attrs: {'data-slot': 'refresh'}});
    this.connSlot = views.el('div', {attrs: {'data-slot': 'connection'}});
    this.bodySlot = views.el('div', {attrs: {'data-slot': 'body'}});
    this.sourcesSlot = views.el('div', {attrs: {'data-slot': 'sources'}});
    this.sourcesSection = views.buildSourcesTable([], 0);
    this.sourcesBody = this.sourcesSection.querySelector('[data-role="sources-body"]');
    this.summaryNode = this.sourcesSection.querySelector('[data-role="fleet-summary"]');
    this.sourcesSlot.append(this.sourcesSection);
    this.connBox = views.buildConnection(this.conn, this.nowS());
    this.connLive = this.connBox.querySelector('[data-role="conn-live"]');
    this.connSlot.append(this.connBox);
    // Source state changes for screen readers ("train: sync finished"); visually hidden.
    this.announcer = views.el('div', {cls: 'sr-only', attrs: {'role': 'status',
      'aria-live': 'polite', 'aria-atomic': 'true', 'data-role': 'announcer'}});
    this.runsSection = views.buildRunsSection(this.sort, this.filter);
    this.runsTable = this.runsSection.querySelector('table');
    this.runsBody = this.runsSection.querySelector('[data-role="runs-body"]');
    this.runsCount = this.runsSection.querySelector('[data-role="runs-count"]');
    this.filterInput = this.runsSection.querySelector('[data-role="filter"]');
    this.pagerNode = this.runsSection.querySelector('[data-role="pager"]');
    this.page = 0;
    this.loading = views.el('p', {cls: 'muted', text: 'Loading sync status\u2026',
      attrs: {'data-role': 'loading'}});

    const app = views.el('div', {cls: 'tb-rsync'},
        [this.headerSlot, this.refreshSlot, this.connSlot, this.bodySlot, this.announcer]);
    this.bodySlot.append(this.loading);
    root.append(app);
    this.app = app;

    app.addEventListener('click', (e) => this.onClick(e));
    // <details> "toggle" does not bubble; capture it to remember what the user opened.
    app.addEventListener('toggle', (e) => {
      const key = e.target && e.target.getAttribute && e.target.getAttribute('data-key');
      if (!key) return;
      if (e.target.open) this.openDetails.add(key);
      else this.openDetails.delete(key);
    }, true);
    app.addEventListener('change', (e) => {
      if (e.target.getAttribute('data-role') !== 'refresh-toggle') return;
      this.refresher.setChoice(e.target.checked);
      this.renderRefresh();
      this.checkVisibility();
    });
    this.filterInput.addEventListener('input', () => {
      this.filter = this.filterInput.value;
      this.page = 0;
      this.saveUiState();
      this.scheduleRunsRender();
    });

    this.poller = new Poller({
      onStatus: (status, info) => this.onStatus(status, info),
      onError: (info) => this.onError(info),
      isHidden: () => pageHidden() && !this.refresher.wantsPolling(),
    });
    this.renderAll();
  }

  start() {
    this.hidden = pageHidden();
    this.poller.start();
    this.tick();
    const onViewChange = () => this.checkVisibility();
    document.addEventListener('visibilitychange', onViewChange);
    window.addEventListener('resize', onViewChange);
  }

  /**
   * While nobody can see the tab the poller sleeps (it schedules nothing); coming back into
   * view (browser tab, or TensorBoard switching back to Sync) asks at once. Called on
   * visibilitychange/resize and, as a fallback, on every local tick (no request involved).
   */
  checkVisibility() {
    const now = pageHidden() && !this.refresher.wantsPolling();
    if (this.hidden && !now) this.poller.poll();
    else if (!now && this.poller.sleeping) this.poller.poll();
    this.hidden = now;
  }

  saveUiState() {
    try {
      window.sessionStorage.setItem(STORAGE_KEY, JSON.stringify({sort: this.sort, filter: this.filter}));
    } catch (e) { /* storage disabled: state just does not survive a reload */ }
  }

  /** The server's clock now, estimated from the last answer (ages use the server clock). */
  nowS() {
    if (!this.status || typeof this.status.server_unix_s !== 'number') return Date.now() / 1000;
    return this.status.server_unix_s + (Date.now() - this.receivedAtMs) / 1000;
  }

  tick() {
    this.stats.ticks += 1;
    this.checkVisibility();
    this.refreshCharts();
    if (!this.hidden) views.refreshAges(this.app, this.nowS());
    setTimeout(() => this.tick(), TICK_MS);
  }

  /** Say `text` through the visually-hidden polite live region (same text: said again). */
  announce(text) {
    if (!text) return;
    if (this.announcer.textContent === text) {
      this.announcer.textContent = '';
      setTimeout(() => { this.announcer.textContent = text; }, 50);
    } else {
      this.announcer.textContent = text;
    }
  }

  onStatus(status, {requestedAtMs}) {
    const news = views.sourceAnnouncements(this.prevSources, status.sources || []);
    if (!this.conn.ok) news.unshift('TensorBoard reachable again.');
    this.prevSources = (status.sources || []).map((s) => ({name: s.name, state: s.state,
      error: s.error}));
    this.status = status;
    const pollMs = idlePollMs(status);
    if (pollMs !== null) this.poller.slowMs = Math.min(this.poller.slowMs, pollMs);
    this.receivedAtMs = Date.now();
    this.conn = {ok: true};
    if (news.length) this.announce(news.join('. '));
    this.stats.statusUpdates += 1;
    for (const [name, answeredAtMs] of this.pending) {
      if (requestedAtMs >= answeredAtMs) this.pending.delete(name);
    }
    // A run whose source is failing may have newer data at the source than anything shown:
    // its row says so (rows are keyed by this JSON, so they update when that changes).
    const failing = new Set((status.sources || []).filter((s) => s.state === 'error')
        .map((s) => s.name));
    this.runs = (status.runs || []).map((r) => failing.has(r.source) ? {...r, source_failing: true} : r);
    this.runsJson = JSON.stringify(this.runs);
    this.refresher.onStatus(status);
    this.refreshCharts();
    this.renderAll();
  }

  /** Click TensorBoard's reload if due (refresh.js decides), and come back when it is. */
  refreshCharts() {
    this.refresher.tick();
    this.renderRefresh();
    clearTimeout(this.refreshTimer);
    const inMs = this.refresher.nextTickInMs();
    // 0: due but waiting for the user to leave the Sync tab; the 1 s tick looks again.
    if (inMs) this.refreshTimer = setTimeout(() => this.refreshCharts(), inMs + 20);
  }

  renderRefresh() {
    const r = this.refresher;
    const lastClickS = r.clicks ? this.nowS() - (Date.now() - r.lastClickMs) / 1000 : null;
    const reloadDataS = savedReloadPeriodS(r.storage);
    const key = JSON.stringify([r.enabled, r.missing, r.clicks, reloadDataS, !!this.status]);
    if (!this.status || !this.changed('refresh', key)) return;
    replaceSlot(this.refreshSlot, views.buildRefreshControl(
        {enabled: r.enabled, missing: r.missing, clicks: r.clicks, lastClickS, reloadDataS},
        this.nowS()), this.focusMemo);
  }

  onError(info) {
    this.conn = {ok: false, failures: info.failures, retryInMs: info.retryInMs,
      retryAtS: this.nowS() + info.retryInMs / 1000, error: info.status ? info.error : ''};
    this.renderConnection();
  }

  isPending(name) {
    return this.pending.has(name) || this.pending.has('*');
  }

  async onClick(e) {
    const target = e.target.closest('button');
    if (!target || !this.app.contains(target) || ignoresClicks(target)) return;
    const action = target.getAttribute('data-action');
    if (action === 'sync' && !this.conn.ok) return;
    if (action === 'sync') {
      const name = target.hasAttribute('data-source') ? target.getAttribute('data-source') : null;
      await this.sync(name, target);
    } else if (action === 'retry') {
      this.poller.poll();
    } else if (action === 'page-prev' || action === 'page-next') {
      this.page += action === 'page-next' ? 1 : -1;
      this.renderRuns();
      // The pager is under the table: bring the new page's first rows into view.
      if (this.runsTable.getBoundingClientRect().top < 0) this.runsTable.scrollIntoView();
    } else if (target.hasAttribute('data-sort')) {
      this.sort = views.nextSort(this.sort, target.getAttribute('data-sort'));
      this.page = 0;
      this.saveUiState();
      this.renderRuns();
    }
  }

  async sync(name, button) {
    const key = name === null ? '*' : name;
    if (document.activeElement === button) this.focusMemo.key = button.getAttribute('data-key');
    button.setAttribute('aria-disabled', 'true'); // at once: a second click must not wait
    button.textContent = 'Syncing\u2026';
    this.pending.set(key, Infinity);
    this.message = null;
    this.renderHeader();
    this.renderSources();
    try {
      await requestSync(name);
      this.pending.set(key, Date.now());
    } catch (err) {
      this.pending.delete(key);
      this.message = err.message;
    }
    this.poller.hurry();
    this.poller.poll();
    this.renderAll();
  }

  renderAll() {
    this.renderHeader();
    this.renderConnection();
    this.renderBody();
    views.refreshAges(this.app, this.nowS());
  }

  changed(name, key) {
    if (this.keys[name] === key) return false;
    this.keys[name] = key;
    return true;
  }

  renderHeader() {
    const st = this.status;
    const sources = (st && st.sources) || [];
    const allBusy = this.pending.has('*') || (sources.length > 0 && sources.every(
        (s) => s.state === 'syncing' || s.state === 'queued' || this.pending.has(s.name)));
    const key = JSON.stringify([st && [st.logdir, st.loader, st.reload_note, st.rsync_error,
      st.config_error, st.interval_s, sources.length,
      (st.discover || []).map((r) => [r.rule, r.last_run_unix_s, r.error, r.sources])],
    allBusy, this.message]);
    if (!this.changed('header', key)) return;
    replaceSlot(this.headerSlot, views.buildHeader(st, {allBusy, message: this.message}),
        this.focusMemo);
  }

  /**
   * The live region's text changes only when the connection state does (down, or why), so
   * screen readers hear "TensorBoard not reachable" once, not on every retry or countdown
   * tick; the countdown and "Retry now" beside it are rebuilt silently.
   */
  renderConnection() {
    const message = views.connectionMessage(this.conn);
    if (this.connLive.textContent !== message) this.connLive.textContent = message;
    const cls = this.conn.ok ? 'rs-conn' : 'rs-conn rs-alert';
    if (this.connBox.className !== cls) this.connBox.className = cls;
    // Unreachable: the tables are only what TensorBoard said last; grey them, and a Sync
    // click could not reach it anyway.
    this.app.classList.toggle('rs-offline', !this.conn.ok);
    const key = JSON.stringify(this.conn);
    if (!this.changed('conn', key)) return;
    const old = this.connBox.querySelector('[data-role="conn-retry"]');
    keepFocus(old, this.focusMemo, () => {
      const node = views.buildConnectionRetry(this.conn, this.nowS());
      old.replaceWith(node);
      return node;
    });
  }

  renderBody() {
    const st = this.status;
    if (!st) return;
    const sources = st.sources || [];
    const mode = sources.length ? 'tables' : 'empty';
    if (this.changed('mode', mode)) {
      if (mode === 'empty') {
        this.bodySlot.replaceChildren(views.buildNoSources());
      } else {
        this.bodySlot.replaceChildren(this.sourcesSlot, this.runsSection);
      }
    }
    if (mode === 'tables') {
      this.renderSources();
      this.renderRuns();
    }
  }

  /**
   * Update source rows by name, and within a row only the cells whose data changed
   * (views.SOURCE_CELLS keys): a progress tick replaces that source's state cell and nothing
   * else, so text selected in another row's error <pre>, scroll and focus all stay.
   * Failing sources come first (views.orderSources); the summary line above says how many.
   */
  renderSources() {
    const st = this.status;
    if (!st) return;
    const sources = st.sources || [];
    const summary = views.fleetSummary(sources, this.runs);
    if (this.changed('summary', JSON.stringify(summary))) {
      const node = views.buildFleetSummary(summary, this.nowS());
      this.summaryNode.replaceWith(node);
      this.summaryNode = node;
    }
    const pending = new Set(sources.map((s) => s.name).filter((n) => this.isPending(n)));
    if (!this.changed('sources', JSON.stringify([sources, [...pending]]))) return;
    const nowS = this.nowS();
    const ui = {pending};
    const seen = new Set();
    let prev = null;
    for (const s of views.orderSources(sources)) {
      seen.add(s.name);
      let row = this.sourceRows.get(s.name);
      if (!row) {
        const tr = views.buildSourceRow(s, nowS, ui);
        row = {tr, keys: {}};
        for (const cell of views.SOURCE_CELLS) row.keys[cell.name] = cell.key(s, ui);
        this.sourceRows.set(s.name, row);
        this.restoreDetails(tr);
      } else {
        views.SOURCE_CELLS.forEach((cell, i) => {
          const key = cell.key(s, ui);
          if (row.keys[cell.name] === key) return;
          row.keys[cell.name] = key;
          const old = row.tr.cells[i];
          keepFocus(old, this.focusMemo, () => {
            const td = cell.build(s, nowS, ui);
            td.setAttribute('data-cell', cell.name);
            row.tr.replaceChild(td, old);
            this.restoreDetails(td);
            return td;
          });
        });
      }
      row.tr.classList.toggle('rs-compact', views.compactRow(s, sources.length));
      // Keep that order; move a row only if it is not already in place.
      const want = prev ? prev.nextSibling : this.sourcesBody.firstChild;
      if (want !== row.tr) this.sourcesBody.insertBefore(row.tr, want);
      prev = row.tr;
    }
    for (const [name, row] of this.sourceRows) {
      if (seen.has(name)) continue;
      row.tr.remove();
      this.sourceRows.delete(name);
    }
  }

  restoreDetails(node) {
    for (const details of node.querySelectorAll('details[data-key]')) {
      if (this.openDetails.has(details.getAttribute('data-key'))) details.open = true;
    }
  }

  scheduleRunsRender() {
    if (this.runsFrame) return;
    this.runsFrame = requestAnimationFrame(() => {
      this.runsFrame = 0;
      this.renderRuns();
    });
  }

  /**
   * Update the runs tbody only when the runs, the sort or the filter changed.
   *
   * When the same runs show in the same order (the usual poll: a few runs got new steps),
   * only rows whose data changed are replaced; otherwise the tbody is rebuilt from one
   * DocumentFragment.
   */
  renderRuns() {
    const st = this.status;
    if (!st) return;
    const key = `${this.sort.key}|${this.sort.dir}|${this.filter}|${this.page}|${this.runsJson}`;
    if (!this.changed('runs', key)) return;
    const t0 = performance.now();
    const runs = this.runs || [];
    const matching = views.sortRuns(views.filterRuns(runs, this.filter), this.sort);
    const page = views.runsPage(this.page, matching.length);
    this.page = page.page;
    const shown = matching.slice(page.from, page.to);
    const nowS = this.nowS();
    const jsons = shown.map((r) => JSON.stringify(r));
    const rows = this.runRows || [];
    const sameOrder = shown.length > 0 && rows.length === shown.length &&
      shown.every((r, i) => rows[i].name === r.run);
    if (sameOrder) {
      shown.forEach((r, i) => {
        if (rows[i].json === jsons[i]) return;
        const tr = views.buildRunRow(r, nowS);
        this.runsBody.replaceChild(tr, rows[i].tr);
        rows[i] = {name: r.run, json: jsons[i], tr};
      });
      this.stats.lastRunsRender = 'rows';
    } else {
      this.runsBody.replaceChildren(views.buildRunRows(shown, nowS,
          {total: runs.length, filterText: this.filter.trim()}));
      const trs = this.runsBody.rows;
      this.runRows = shown.map((r, i) => ({name: r.run, json: jsons[i], tr: trs[i]}));
      this.stats.lastRunsRender = 'tbody';
    }
    this.runsCount.textContent = views.runsCountText(matching.length, runs.length);
    keepFocus(this.pagerNode, this.focusMemo, () => {
      const node = views.buildRunsPager(page, matching.length);
      this.pagerNode.replaceWith(node);
      this.pagerNode = node;
      return node;
    });
    views.applySort(this.runsTable, this.sort);
    if (this.filterInput.value !== this.filter) this.filterInput.value = this.filter;
    this.stats.runsRenders += 1;
    this.stats.lastRunsRenderMs = performance.now() - t0;
  }
}

let instance = null;

/** Entry point called by TensorBoard's plugin_entry.html. */
export async function render() {
  if (instance) return instance;
  ensureStylesheet();
  followTheme(document.documentElement);
  instance = new SyncTab(document.body);
  instance.start();
  // For tests and debugging from the console.
  window.__tbRsync = instance;
  return instance;
}
