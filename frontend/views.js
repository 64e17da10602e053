// Pure view builders for the Sync tab.
//
// Every builder takes plain data (the `status` JSON of docs/API.md, or parts of it) and the
// server's clock `nowS` (status.server_unix_s: ages are never computed from the browser's
// clock, which may be skewed from the TensorBoard host), and returns fresh DOM nodes. Text is
// only ever set with textContent: run names, source strings and stderr are user data.
//
// Buttons carry `data-action` (+ `data-source`) and sort headers `data-sort`; index.js
// handles them by event delegation, so nothing here holds state or listeners. Nodes that
// should keep focus or an open <details> across rebuilds carry a stable `data-key`.
// Ages are printed into elements with `data-age-unix` so refreshAges() can update them in
// place between rebuilds.

export const FRESH_MAX_S = 300; // newest event under 5 min old: the job is writing
export const RECENT_MAX_S = 3600; // under an hour: maybe paused, evaluating, flushing slowly

const RUN_STATE_LABELS = {
  live: 'live',
  waiting: 'waiting for reload',
  restart_needed: 'restart needed',
  error: 'error',
  unknown: '\u2014',
};

const SOURCE_STATE_LABELS = {
  idle: 'idle',
  queued: 'queued',
  syncing: 'syncing\u2026',
  error: 'error',
};

// sources[].progress.phase as the backend reports it (tb_rsync_plugin/engine/state.py, rsync.py).
const PHASE_LABELS = {
  connecting: 'connecting\u2026',
  events: 'appending event files',
  files: 'copying other files',
  restage: 're-fetching rewritten files',
  reloading: 'waiting for TensorBoard to reload',
};
// Phases without a byte count of their own: an indeterminate bar, no "0 B · 0%".
const WAITING_PHASES = new Set(['connecting', 'reloading']);

const LOADER_LABELS = {
  legacy: 'legacy loader (--load_fast=false)',
  fast: 'fast loader (data server)',
  none: 'no TensorBoard',
};

const RUN_COLUMNS = [
  {key: 'name', label: 'Run', sortable: true},
  {key: 'source', label: 'Source', sortable: true},
  {key: 'age', label: 'Newest event', sortable: true},
  {key: 'step', label: 'Step', sortable: true, numeric: true},
  {key: 'published', label: 'Published', sortable: false},
  {key: 'state', label: 'TensorBoard', sortable: true},
  {key: 'detail', label: 'Detail', sortable: false},
];

export const DEFAULT_SORT = Object.freeze({key: 'name', dir: 'asc'});

const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: 'base'});

// ---------------------------------------------------------------------------------------
// Formatting helpers (pure, no DOM).

function isNum(x) {
  return typeof x === 'number' && Number.isFinite(x);
}

/** "12 s", "3 min", "2 h", "4 d", "2 y" for a non-negative number of seconds. */
export function formatDuration(seconds) {
  if (!isNum(seconds)) return '\u2014';
  const s = Math.max(0, seconds);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  if (s < 365 * 86400) return `${Math.floor(s / 86400)} d`;
  return `${Math.floor(s / (365 * 86400))} y`;
}

/** "just now", "12 s ago", "3 min ago"; "—" when unknown. Small negative ages are skew. */
export function formatAge(seconds) {
  if (!isNum(seconds)) return '\u2014';
  if (seconds < 1) return 'just now';
  return `${formatDuration(seconds)} ago`;
}

/** "in 12 s", "due now" for a time ahead; "—" when unknown. */
export function formatIn(seconds) {
  if (!isNum(seconds)) return '\u2014';
  if (seconds < 1) return 'due now';
  return `in ${formatDuration(seconds)}`;
}

/** Binary units: "0 B", "512 B", "1.5 KiB", "12 MiB"; "—" when unknown. */
export function formatBytes(bytes) {
  if (!isNum(bytes) || bytes < 0) return '\u2014';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** "5.0 MiB/s"; "—" when unknown. */
export function formatRate(bytesPerSecond) {
  if (!isNum(bytesPerSecond) || bytesPerSecond < 0) return '\u2014';
  return `${formatBytes(bytesPerSecond)}/s`;
}

/** 'fresh' | 'recent' | 'stale' for the age of a run's newest event (unknown: stale). */
export function freshnessClass(ageSeconds) {
  if (!isNum(ageSeconds)) return 'stale';
  if (ageSeconds < FRESH_MAX_S) return 'fresh';
  if (ageSeconds < RECENT_MAX_S) return 'recent';
  return 'stale';
}

/** Exact local time for hover titles, e.g. "2025-11-26 10:40:00 (local time)". */
export function formatLocalTime(unixS) {
  if (!isNum(unixS)) return '';
  const d = new Date(unixS * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())} (local time)`;
}

export function runStateLabel(state) {
  return Object.prototype.hasOwnProperty.call(RUN_STATE_LABELS, state) ?
      RUN_STATE_LABELS[state] : RUN_STATE_LABELS.unknown;
}

export function sourceStateLabel(state) {
  return Object.prototype.hasOwnProperty.call(SOURCE_STATE_LABELS, state) ?
      SOURCE_STATE_LABELS[state] : String(state ?? '\u2014');
}

/** A human label for a progress phase; an unknown phase shows as sent. */
export function phaseLabel(phase) {
  if (phase === null || phase === undefined || phase === '') return '';
  return Object.prototype.hasOwnProperty.call(PHASE_LABELS, phase) ?
      PHASE_LABELS[phase] : String(phase);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// ---------------------------------------------------------------------------------------
// Filtering and sorting (pure, no DOM).

/** Runs whose name or source contains `text` (case-insensitive); all runs for ''. */
export function filterRuns(runs, text) {
  const needle = String(text ?? '').trim().toLowerCase();
  if (!needle) return runs.slice();
  return runs.filter((r) =>
    String(r.run ?? '').toLowerCase().includes(needle) ||
    String(r.source ?? '').toLowerCase().includes(needle));
}

const SORT_VALUE = {
  name: (r) => String(r.run ?? ''),
  source: (r) => String(r.source ?? ''),
  // Ascending age means newest first, i.e. descending wall time.
  age: (r) => (isNum(r.source_wall_time) ? -r.source_wall_time : null),
  step: (r) => (isNum(r.source_step) ? r.source_step : null),
  state: (r) => runStateLabel(r.state),
};

/** A sorted copy; unknown values (null) always last; ties broken by run name. */
export function sortRuns(runs, sort = DEFAULT_SORT) {
  const value = SORT_VALUE[sort.key] || SORT_VALUE.name;
  const sign = sort.dir === 'desc' ? -1 : 1;
  const keyed = runs.map((r) => ({r, v: value(r), n: String(r.run ?? '')}));
  keyed.sort((a, b) => {
    if (a.v === null || b.v === null) {
      if (a.v !== b.v) return a.v === null ? 1 : -1;
    } else {
      const c = typeof a.v === 'number' ? a.v - b.v : collator.compare(a.v, b.v);
      if (c !== 0) return sign * c;
    }
    return collator.compare(a.n, b.n);
  });
  return keyed.map((k) => k.r);
}

/**
 * The next sort after clicking header `key`: same key flips; another key starts ascending,
 * except Step, which starts with the furthest run.
 */
export function nextSort(sort, key) {
  if (sort.key === key) return {key, dir: sort.dir === 'asc' ? 'desc' : 'asc'};
  return {key, dir: key === 'step' ? 'desc' : 'asc'};
}

// ---------------------------------------------------------------------------------------
// DOM helpers.

/** createElement with a class, text (textContent) and plain attributes. */
export function el(tag, {cls, text, attrs} = {}, children = []) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const child of children) {
    if (child) node.append(child);
  }
  return node;
}

/** A span showing the age of `unixS` that refreshAges() keeps current; exact time on hover. */
export function ageSpan(unixS, nowS, {mode = 'ago', fresh = false} = {}) {
  if (!isNum(unixS)) return el('span', {cls: 'muted', text: '\u2014'});
  const span = el('span', {cls: 'age', attrs: {'data-age-unix': unixS, 'data-age-mode': mode,
    'title': formatLocalTime(unixS)}});
  if (fresh) span.setAttribute('data-fresh', '');
  setAge(span, unixS, nowS, mode, fresh);
  return span;
}

function ageText(unixS, nowS, mode) {
  if (mode === 'in') return formatIn(unixS - nowS);
  if (mode === 'retry') {
    const s = unixS - nowS;
    return !isNum(s) || s < 1 ? 'retrying now' : `retrying in ${formatDuration(s)}`;
  }
  return formatAge(nowS - unixS);
}

function setAge(span, unixS, nowS, mode, fresh) {
  const text = ageText(unixS, nowS, mode);
  if (span.textContent !== text) span.textContent = text;
  if (fresh) {
    const cls = `age fresh-${freshnessClass(nowS - unixS)}`;
    if (span.className !== cls) span.className = cls;
  }
}

/** Update every age under `root` for the new server clock; touches only what changed. */
export function refreshAges(root, nowS) {
  for (const span of root.querySelectorAll('[data-age-unix]')) {
    setAge(span, Number(span.getAttribute('data-age-unix')), nowS,
        span.getAttribute('data-age-mode'), span.hasAttribute('data-fresh'));
  }
}

function syncButton(label, {source, disabled, busyLabel, cls}) {
  const attrs = {'type': 'button', 'data-action': 'sync',
    'data-key': source === undefined ? 'sync-all' : `sync:${source}`};
  if (source !== undefined) {
    attrs['data-source'] = source;
    attrs['aria-label'] = `Sync ${source}`;
  }
  // aria-disabled, not disabled: a busy button keeps keyboard focus (index.js ignores its
  // clicks), so Tab after Enter continues from it instead of from the page's start.
  if (disabled) attrs['aria-disabled'] = 'true';
  return el('button', {cls: cls || 'btn', text: disabled && busyLabel ? busyLabel : label, attrs});
}

// ---------------------------------------------------------------------------------------
// Header.

/**
 * Title, loader note, rsync error, connection line and "Sync all".
 *
 * @param {object} status the status JSON (may be null before the first answer)
 * @param {{allBusy?: boolean, message?: string|null}} ui allBusy disables "Sync all"
 *     (every source is syncing/queued, or a "sync all" request is in flight); message is a
 *     one-line notice from index.js (a refused POST)
 */
export function buildHeader(status, ui = {}) {
  const header = el('header', {cls: 'rs-header'});
  const titleRow = el('div', {cls: 'rs-title-row'});
  titleRow.append(el('h1', {text: 'Sync'}));
  const sources = (status && status.sources) || [];
  if (sources.length) {
    titleRow.append(syncButton('Sync all', {disabled: !!ui.allBusy, busyLabel: 'Syncing\u2026',
      cls: 'btn btn-primary'}));
  }
  header.append(titleRow);

  if (status) {
    const meta = el('p', {cls: 'rs-meta'});
    if (status.logdir) {
      meta.append(el('span', {text: 'Logdir '}), el('code', {text: status.logdir}));
    }
    if (status.loader) {
      meta.append(el('span', {cls: 'sep', text: ' \u00b7 '}),
          el('span', {text: LOADER_LABELS[status.loader] || String(status.loader)}));
    }
    if (isNum(status.interval_s)) {
      meta.append(el('span', {cls: 'sep', text: ' \u00b7 '}), el('span', {text:
        status.interval_s > 0 ? `automatic sync every ${formatDuration(status.interval_s)}` :
          'automatic sync off'}));
    }
    header.append(meta);
    if (status.reload_note) {
      header.append(el('p', {cls: 'rs-note', text: status.reload_note,
        attrs: {'data-role': 'reload-note'}}));
    }
    if (status.rsync_error) {
      header.append(el('div', {cls: 'rs-alert', text: status.rsync_error,
        attrs: {'role': 'alert', 'data-role': 'rsync-error'}}));
    }
    if (status.config_error) {
      header.append(el('div', {cls: 'rs-alert', text: status.config_error,
        attrs: {'role': 'alert', 'data-role': 'config-error'}}));
    }
    for (const rule of status.discover || []) header.append(discoverLine(rule, status));
  }
  if (ui.message) {
    header.append(el('div', {cls: 'rs-alert rs-alert-soft', text: ui.message,
      attrs: {'role': 'status', 'data-role': 'message'}}));
  }
  return header;
}

/** One [[discover]] rule: when it last ran, what it found, and its error if it failed. */
function discoverLine(rule, status) {
  const line = el('p', {cls: rule.error ? 'rs-alert' : 'rs-note',
    attrs: {'data-role': 'discover-rule'}});
  line.append(el('span', {text: `Discovery ${rule.rule}: `}));
  if (isNum(rule.last_run_unix_s)) {
    line.append(el('span', {text: 'ran '}), ageSpan(rule.last_run_unix_s, status.server_unix_s));
  } else {
    line.append(el('span', {text: 'not run yet'}));
  }
  line.append(el('span', {text: `, ${plural((rule.sources || []).length, 'source')}.`}));
  if (rule.error) line.append(el('span', {text: ' ' + rule.error.message}));
  return line;
}

/**
 * The chart refresh choice under the header: a checkbox, remembered in localStorage, and a
 * line saying what it does, or how to get fresh charts when it is off or cannot work.
 *
 * @param {{enabled: boolean, missing: ?string, clicks: number, lastClickS: ?number,
 *     reloadDataS: ?number}} refresh reloadDataS: TensorBoard's saved "Reload data" period
 *     when it is on (refresh.js turns it on with the choice), else null
 * @param {number} nowS server clock (for "last refresh 3 s ago")
 */
export function buildRefreshControl(refresh, nowS) {
  const box = el('div', {cls: 'rs-refresh', attrs: {'data-role': 'refresh'}});
  const label = el('label', {cls: 'rs-refresh-label'});
  const input = el('input', {attrs: {'type': 'checkbox', 'data-role': 'refresh-toggle',
    'data-key': 'refresh-toggle'}});
  input.checked = !!refresh.enabled;
  label.append(input, ' Refresh TensorBoard after each sync');
  box.append(label);
  const manual = 'To see new points, click ⟳ at the top right of TensorBoard, or turn ' +
    'on its Settings → Reload data.';
  let text;
  if (refresh.enabled && refresh.missing) {
    text = `Cannot refresh the charts here (${refresh.missing}). ${manual}`;
  } else if (refresh.enabled) {
    text = 'Open charts reload (as with ⟳) when a sync publishes new data, at most ' +
      'every few seconds.';
  } else {
    text = `TensorBoard does not reload its charts by itself. ${manual}`;
  }
  const note = el('p', {cls: 'rs-note', text, attrs: {'data-role': 'refresh-note'}});
  if (refresh.enabled && !refresh.missing && isNum(refresh.lastClickS)) {
    note.append(' Last refresh ', ageSpan(refresh.lastClickS, nowS), '.');
  }
  if (refresh.enabled && isNum(refresh.reloadDataS)) {
    // Said beside the choice: turning it on also changed TensorBoard's own setting.
    note.append(' ', el('span', {attrs: {'data-role': 'reload-data-note'},
      text: 'TensorBoard pages opened later in this browser reload by themselves every ' +
        `${formatDuration(refresh.reloadDataS)}, even without this tab: its own ` +
        'Settings \u2192 Reload data is on too.'}));
  }
  box.append(note);
  return box;
}

/**
 * What the connection notice says (and screen readers announce): '' while reachable.
 * It depends only on the connection *state* (down, and why), never on the countdown, so
 * index.js re-announces it only when that state changes.
 */
export function connectionMessage(conn) {
  if (!conn || conn.ok) return '';
  return `TensorBoard not reachable${conn.error ? ` (${conn.error})` : ''}.`;
}

/**
 * The connection notice: "TensorBoard not reachable — retrying in 8 s [Retry now]".
 *
 * The sentence is in a polite live region (`data-role="conn-live"`, role=status); the
 * countdown and the button are outside it, so a ticking countdown is never announced.
 * index.js keeps the live region node and only changes its text on a state change.
 *
 * @param {{ok: boolean, failures?: number, retryInMs?: number, retryAtS?: number,
 *     error?: string}} conn retryAtS (server clock) makes the countdown tick via refreshAges
 * @param {number} nowS server clock
 */
export function buildConnection(conn, nowS) {
  const down = !!(conn && !conn.ok);
  const box = el('div', {cls: down ? 'rs-conn rs-alert' : 'rs-conn',
    attrs: {'data-role': 'connection'}});
  box.append(el('span', {cls: 'rs-conn-live', text: connectionMessage(conn),
    attrs: {'role': 'status', 'aria-live': 'polite', 'aria-atomic': 'true',
      'data-role': 'conn-live'}}));
  box.append(buildConnectionRetry(conn, nowS));
  return box;
}

/** The part of the connection notice outside the live region: countdown and "Retry now". */
export function buildConnectionRetry(conn, nowS) {
  const rest = el('span', {cls: 'rs-conn-retry', attrs: {'data-role': 'conn-retry'}});
  if (!conn || conn.ok) return rest;
  const at = isNum(conn.retryAtS) ? conn.retryAtS :
    (isNum(conn.retryInMs) && isNum(nowS) ? nowS + conn.retryInMs / 1000 : null);
  if (at !== null && isNum(nowS)) {
    // Ticks in place (refreshAges): "retrying in 8 s", "7 s", ... outside the live region.
    const span = el('span', {attrs: {'data-age-unix': at, 'data-age-mode': 'retry'}});
    setAge(span, at, nowS, 'retry', false);
    rest.append(' \u2014 ', span, '. ');
  } else if (isNum(conn.retryInMs)) {
    rest.append(` \u2014 ${ageText(conn.retryInMs / 1000, 0, 'retry')}. `);
  } else {
    rest.append(' ');
  }
  rest.append(el('button', {cls: 'btn btn-small', text: 'Retry now',
    attrs: {'type': 'button', 'data-action': 'retry', 'data-key': 'retry'}}));
  return rest;
}

/**
 * Sentences for a screen reader about sources whose state changed between two answers,
 * e.g. "train: sync finished", "bad: error: The source directory does not exist.".
 * Sources new in `sources` (or everything on the first answer, prev null) are not news.
 */
export function sourceAnnouncements(prev, sources) {
  if (!prev) return [];
  const before = new Map(prev.map((s) => [s.name, s]));
  const out = [];
  for (const s of sources || []) {
    const old = before.get(s.name);
    if (!old) continue;
    const msg = s.error && s.error.message ? s.error.message : 'sync failed.';
    const oldMsg = old.error && old.error.message ? old.error.message : 'sync failed.';
    if (old.state === s.state) {
      if (s.state === 'error' && msg !== oldMsg) out.push(`${s.name}: error: ${msg}`);
      continue;
    }
    if (s.state === 'syncing') out.push(`${s.name}: syncing`);
    else if (s.state === 'queued') out.push(`${s.name}: queued`);
    else if (s.state === 'error') out.push(`${s.name}: error: ${msg}`);
    else if (s.state === 'idle' && (old.state === 'syncing' || old.state === 'queued')) {
      out.push(`${s.name}: sync finished`);
    } else if (s.state === 'idle' && old.state === 'error') {
      out.push(`${s.name}: error cleared`);
    } else {
      out.push(`${s.name}: ${sourceStateLabel(s.state)}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Sources.

/** Shown instead of the tables when nothing is configured. */
export function buildNoSources() {
  const box = el('section', {cls: 'rs-empty', attrs: {'data-role': 'no-sources'}});
  box.append(el('h2', {text: 'No sources configured'}));
  const p = el('p');
  p.append('Start TensorBoard with ', el('code', {text: '--rsync_source NAME=SOURCE'}),
      ' (repeatable) or ', el('code', {text: '--rsync_config FILE'}),
      '. NAME becomes a folder under the logdir; SOURCE is anything rsync accepts. For example:');
  box.append(p);
  box.append(el('pre', {text: 'tensorboard --logdir ~/logs \\\n' +
    '    --rsync_source gpu1=gpu1:/scratch/me/logs/ \\\n' +
    '    --rsync_interval 30'}));
  box.append(el('p', {text: 'A config file holds one [[source]] table per source:'}));
  box.append(el('pre', {text: '[[source]]\nname = "gpu1"\nsource = "gpu1:/scratch/me/logs/"\n' +
    'ssh = "ssh -p 2222 -J login"'}));
  return box;
}

function stateCell(source) {
  const td = el('td', {cls: 'col-state'});
  const state = source.state;
  td.append(el('span', {cls: `badge src-${state}`, text: sourceStateLabel(state),
    attrs: {'data-role': 'source-state'}}));
  const p = source.progress;
  if (state === 'syncing' && p) {
    const waiting = WAITING_PHASES.has(p.phase);
    const wrap = el('div', {cls: 'progress', attrs: {'data-role': 'progress'}});
    const bar = el('progress', {attrs: {'max': 100, 'aria-label': `Progress of ${source.name}`}});
    // No value: an indeterminate bar while connecting or waiting for TensorBoard.
    if (isNum(p.percent) && !waiting) bar.value = Math.max(0, Math.min(100, p.percent));
    wrap.append(bar);
    const parts = [];
    const label = phaseLabel(p.phase);
    if (label) parts.push(label);
    if (!waiting || (isNum(p.bytes_done) && p.bytes_done > 0)) {
      if (isNum(p.bytes_done)) parts.push(formatBytes(p.bytes_done));
      if (!waiting && isNum(p.percent)) parts.push(`${Math.round(p.percent)}%`);
      if (!waiting && isNum(p.rate_bytes_s)) parts.push(formatRate(p.rate_bytes_s));
    }
    wrap.append(el('div', {cls: 'small muted rs-sub', text: parts.join(' \u00b7 '),
      attrs: {'data-role': 'progress-text', 'data-phase': p.phase ?? ''}}));
    td.append(wrap);
  }
  return td;
}

/** "3 files, 1.0 MiB, 2 runs" for a source's last_change. */
export function changeSummary(change) {
  const parts = [];
  if (isNum(change.files_published)) parts.push(plural(change.files_published, 'file'));
  if (isNum(change.bytes_published)) parts.push(formatBytes(change.bytes_published));
  if (isNum(change.runs_updated)) parts.push(plural(change.runs_updated, 'run'));
  return parts.join(', ');
}

function changeRunsTitle(change) {
  const runs = Array.isArray(change.runs) ? change.runs : [];
  if (!runs.length) return '';
  const more = isNum(change.runs_updated) && change.runs_updated > runs.length ?
    ` and ${change.runs_updated - runs.length} more` : '';
  return `Runs: ${runs.join(', ')}${more}`;
}

function lastResultCell(source, nowS) {
  const td = el('td', {cls: 'col-result'});
  const r = source.last_result;
  const change = source.last_change;
  if (!r) {
    td.append(el('span', {cls: 'muted', text: '\u2014'}));
    return td;
  }
  const main = [];
  if (isNum(r.files_transferred)) main.push(plural(r.files_transferred, 'file'));
  if (isNum(r.bytes_received)) main.push(`${formatBytes(r.bytes_received)} received`);
  // Most syncs of a quiet source move nothing: say so, and when it last moved data.
  const nothing = r.files_transferred === 0 && !r.files_published;
  // After a failure this is still the last good sync's result: say so.
  const stale = source.state === 'error';
  const line = el('div', {cls: stale || nothing ? 'muted' : '', attrs: {'data-role': 'result'},
    text: `${stale ? 'last success: ' : ''}${nothing ? 'no new data' : main.join(', ') || '\u2014'}`});
  const earlier = change && isNum(change.unix_s) &&
    !(isNum(source.last_ok_unix_s) && change.unix_s >= source.last_ok_unix_s);
  if (earlier) {
    const what = el('span', {attrs: {'data-role': 'last-change', 'title': changeRunsTitle(change)}});
    what.append('last new data ', ageSpan(change.unix_s, nowS), ` (${changeSummary(change)})`);
    line.append('; ', what);
  }
  td.append(line);
  const sub = [];
  if (!nothing && (isNum(r.files_published) || isNum(r.bytes_published))) {
    sub.push(`published ${isNum(r.files_published) ? plural(r.files_published, 'file') : ''}` +
      `${isNum(r.bytes_published) ? ` (${formatBytes(r.bytes_published)})` : ''}`);
  }
  if (isNum(r.runs_updated) && !nothing) sub.push(`${plural(r.runs_updated, 'run')} updated`);
  if (isNum(r.duration_s)) sub.push(`${r.duration_s < 10 ? r.duration_s.toFixed(1) : Math.round(r.duration_s)} s`);
  if (sub.length) td.append(el('div', {cls: 'small muted rs-sub', text: sub.join(' \u00b7 ')}));
  return td;
}

/**
 * An rsync failure's details ("command: …\nexit code: N\nstderr:\n…", rsync.py) with what
 * went wrong first: the stderr tail, then the exit code, then the long command, which
 * otherwise pushed the useful lines below the fold. Other details are kept as they are.
 */
export function detailsWrongFirst(details) {
  const m = /^command: ([\s\S]*?)\nexit code: (.*)\nstderr:\n([\s\S]*)$/.exec(details);
  return m ? `stderr:\n${m[3]}\nexit code: ${m[2]}\ncommand: ${m[1]}` : details;
}

function errorCell(source, nowS) {
  const td = el('td', {cls: 'col-error'});
  const err = source.error;
  if (err) {
    td.append(el('div', {cls: 'err-message', text: err.message || 'Sync failed.',
      attrs: {'data-role': 'source-error'}}));
    if (err.details) {
      const details = el('details', {attrs: {'data-key': `details:${source.name}`}});
      const summary = el('summary', {text: 'Details'});
      if (isNum(err.unix_s)) summary.append(' \u00b7 ', ageSpan(err.unix_s, nowS));
      details.append(summary);
      details.append(el('pre', {cls: 'err-details', text: detailsWrongFirst(err.details)}));
      td.append(details);
    } else if (isNum(err.unix_s)) {
      td.append(el('div', {cls: 'small muted'}, [ageSpan(err.unix_s, nowS)]));
    }
  }
  for (const w of source.warnings || []) {
    td.append(el('div', {cls: 'warn', text: typeof w === 'string' ? w : JSON.stringify(w),
      attrs: {'data-role': 'source-warning'}}));
  }
  if (!td.childNodes.length) td.append(el('span', {cls: 'muted', text: '\u2014'}));
  return td;
}

function nameCell(s) {
  const td = el('td', {cls: 'col-name'});
  td.append(el('div', {cls: 'name', text: s.name, attrs: {'title': s.source}}));
  td.append(el('code', {cls: 'small muted src-string rs-sub', text: s.source}));
  if (s.found_by) {
    td.append(el('div', {cls: 'small muted rs-sub', attrs: {'data-role': 'found-by'},
      text: `found by ${s.found_by}` + (s.leaving ? ' \u00b7 left: last sync' : '')}));
  }
  return td;
}

function lastCell(s, nowS) {
  const last = el('td', {cls: 'col-last'});
  if (s.state === 'syncing' && isNum(s.last_start_unix_s)) {
    last.append(el('span', {text: 'started '}), ageSpan(s.last_start_unix_s, nowS));
  } else if (isNum(s.last_end_unix_s)) {
    if (s.state === 'error') last.append(el('span', {cls: 'err-message', text: 'failed '}));
    last.append(ageSpan(s.last_end_unix_s, nowS));
    if (isNum(s.last_ok_unix_s) && s.last_ok_unix_s !== s.last_end_unix_s) {
      const ok = el('div', {cls: 'small muted rs-sub'});
      ok.append('last success ', ageSpan(s.last_ok_unix_s, nowS));
      last.append(ok);
    }
  } else {
    last.append(el('span', {cls: 'muted', text: 'never'}));
  }
  return last;
}

// How a source's changes are noticed (sources[].probe_mode, docs/API.md); "listing" (rsync
// lists it every interval) reads as the plain pace, with the reason on hover.
const WATCHERS = Object.freeze({walk: 'walked', probe: 'probe on the host', inotify: 'inotify'});

function nextCell(s, nowS) {
  const next = el('td', {cls: 'col-next'});
  if (isNum(s.interval_s) && s.interval_s > 0) {
    // No time while a sync is queued or running: its end sets the next one. A failing
    // source shows its backoff ("retrying in 40 s"); an idle one its slower pace.
    if (isNum(s.next_sync_unix_s)) {
      next.append(ageSpan(s.next_sync_unix_s, nowS, {mode: s.retrying ? 'retry' : 'in'}));
    } else {
      next.append(el('span', {text: 'after this sync'}));
    }
    const watcher = WATCHERS[s.probe_mode];
    const factor = isNum(s.idle_factor) && s.idle_factor > 1 && !s.retrying ? s.idle_factor : 1;
    let pace = factor > 1 ?
      `idle: every ${formatDuration(s.interval_s * factor)} (set: ${formatDuration(s.interval_s)})` :
      `every ${formatDuration(s.interval_s)}`;
    if (watcher) pace = `on change: ${watcher}, every ${formatDuration(s.interval_s)}`;
    const why = s.probe_detail || (factor > 1 ? 'No change in the last syncs: checked less ' +
      'often until the next change or a click on Sync.' : '');
    next.append(el('div', {cls: 'small muted rs-sub', text: pace,
      attrs: {'data-role': 'probe-mode', ...(why ? {'title': why} : {})}}));
  } else {
    next.append(el('span', {cls: 'muted', text: 'on request'}));
  }
  const requests = requestsLine(s.api_requests);
  if (requests) next.append(requests);
  return next;
}

/**
 * An rclone source's cost: its HTTP requests in the last hour (sources[].api_requests,
 * docs/API.md); null for other sources, which have no such figure.
 */
export function requestsLine(r) {
  if (!r || typeof r !== 'object') return null;
  const known = isNum(r.last_hour);
  const syncs = isNum(r.syncs) ? plural(r.syncs, 'sync') : 'the syncs';
  const title = known ?
    `HTTP requests rclone made to the storage for the ${syncs} that ended in the last ` +
      'hour (a rolling hour, to the minute), failed syncs included.' :
    'Not counted: this source\'s rclone_flags (or RCLONE_* variables) set rclone\'s ' +
      'logging (-q, --log-level, --log-file, --syslog, --dump), which tb-rsync leaves alone.';
  return el('div', {cls: 'small muted rs-sub', attrs: {'data-role': 'api-requests', title},
    text: known ? `${r.last_hour.toLocaleString('en-US')} requests/h` : 'requests/h: unknown'});
}

function actionCell(s, ui) {
  const pending = (ui && ui.pending) || new Set();
  const busy = s.state === 'syncing' || s.state === 'queued' || pending.has(s.name);
  const action = el('td', {cls: 'col-action'});
  action.append(syncButton('Sync', {source: s.name, disabled: busy,
    busyLabel: s.state === 'queued' ? 'Queued' : 'Syncing\u2026'}));
  return action;
}

/**
 * The cells of a source row, in column order. `key(s, ui)` is everything the cell shows
 * (ages tick in place, so only their timestamps count): index.js rebuilds a cell only when
 * its key changed, so a progress tick never touches an open error <details> next to it.
 */
export const SOURCE_CELLS = Object.freeze([
  {name: 'name', key: (s) => JSON.stringify([s.name, s.source, s.found_by ?? null, !!s.leaving]),
    build: (s) => nameCell(s)},
  {name: 'state', key: (s) => JSON.stringify([s.name, s.state, s.state === 'syncing' ? s.progress : null]),
    build: (s) => stateCell(s)},
  {name: 'last', key: (s) => JSON.stringify([s.state === 'syncing', s.last_start_unix_s,
    s.last_end_unix_s, s.last_ok_unix_s]), build: (s, nowS) => lastCell(s, nowS)},
  {name: 'result', key: (s) => JSON.stringify([s.state === 'error', s.last_result ?? null,
    s.last_change ?? null, s.last_ok_unix_s]), build: (s, nowS) => lastResultCell(s, nowS)},
  {name: 'next', key: (s) => JSON.stringify([s.interval_s, s.next_sync_unix_s, !!s.retrying,
    s.idle_factor ?? 1, s.probe_mode ?? null, s.probe_detail ?? null, s.api_requests ?? null]),
    build: (s, nowS) => nextCell(s, nowS)},
  {name: 'error', key: (s) => JSON.stringify([s.name, s.error ?? null, s.warnings ?? []]),
    build: (s, nowS) => errorCell(s, nowS)},
  {name: 'action', key: (s, ui) => JSON.stringify([s.name, s.state,
    !!(ui && ui.pending && ui.pending.has(s.name))]), build: (s, nowS, ui) => actionCell(s, ui)},
]);

// From this many sources on, a source with nothing wrong gets a one-line row (its source
// string, pace and result details on hover): a fleet fits on a few screens.
export const COMPACT_FROM = 6;

/** Failing sources first (a fleet's one problem is never row 101), the rest as configured. */
export function orderSources(sources) {
  return [...sources.filter((s) => s.state === 'error'),
    ...sources.filter((s) => s.state !== 'error')];
}

/** True when `s` shows on one line: one of many sources, with no error or warning. */
export function compactRow(s, count) {
  return count >= COMPACT_FROM && s.state !== 'error' && !s.error &&
    !(s.warnings && s.warnings.length);
}

/**
 * The fleet at a glance: how many sources are ok, failing, syncing (or queued), and the
 * source whose newest event is oldest (runs: status.runs), or null unless two sources or
 * more have runs with a time.
 */
export function fleetSummary(sources, runs) {
  const out = {total: sources.length, ok: 0, failing: 0, syncing: 0, quietest: null};
  for (const s of sources) {
    if (s.state === 'error') out.failing += 1;
    else if (s.state === 'syncing' || s.state === 'queued') out.syncing += 1;
    else out.ok += 1;
  }
  const newest = new Map();
  for (const r of runs || []) {
    if (isNum(r.source_wall_time) && !(newest.get(r.source) >= r.source_wall_time)) {
      newest.set(r.source, r.source_wall_time);
    }
  }
  // "Quietest" means something only among several sources with runs.
  for (const [name, unixS] of newest.size > 1 ? newest : []) {
    if (!out.quietest || unixS < out.quietest.unixS) out.quietest = {name, unixS};
  }
  return out;
}

/** "101 sources: 100 ok · 1 failing · 0 syncing · quietest: node7, newest event 3 h ago". */
export function buildFleetSummary(summary, nowS) {
  const p = el('p', {cls: 'rs-summary', attrs: {'data-role': 'fleet-summary'}});
  p.append(`${plural(summary.total, 'source')}: `);
  const chip = (n, word, cls, role) => el('span', {cls: `badge ${n ? cls : ''}`,
    text: `${n} ${word}`, attrs: {'data-role': role}});
  p.append(chip(summary.ok, 'ok', 'run-live', 'count-ok'), ' ',
      chip(summary.failing, 'failing', 'src-error', 'count-failing'), ' ',
      chip(summary.syncing, 'syncing', 'src-syncing', 'count-syncing'));
  if (summary.quietest) {
    const q = el('span', {cls: 'muted', attrs: {'data-role': 'quietest',
      'title': 'The source whose newest event is the oldest'}});
    q.append(' \u00b7 quietest: ', el('strong', {text: summary.quietest.name}),
        ', newest event ', ageSpan(summary.quietest.unixS, nowS, {fresh: true}));
    p.append(q);
  }
  return p;
}

/** One source row (`data-source` = its name); each cell carries `data-cell`. */
export function buildSourceRow(s, nowS, ui = {}) {
  const tr = el('tr', {cls: compactRow(s, ui.count || 0) ? 'rs-compact' : '',
    attrs: {'data-source': s.name}});
  for (const cell of SOURCE_CELLS) {
    const td = cell.build(s, nowS, ui);
    td.setAttribute('data-cell', cell.name);
    tr.append(td);
  }
  return tr;
}

/**
 * A summary line and one row per source, failing ones first.
 *
 * @param {Array<object>} sources status.sources
 * @param {number} nowS status.server_unix_s
 * @param {{pending?: Set<string>, runs?: Array<object>}} ui pending: names whose Sync was
 *     clicked and not yet confirmed; runs: status.runs, for the summary
 */
export function buildSourcesTable(sources, nowS, ui = {}) {
  const section = el('section', {cls: 'rs-section', attrs: {'aria-labelledby': 'rs-sources-h'}});
  section.append(el('h2', {text: 'Sources', attrs: {id: 'rs-sources-h'}}));
  section.append(buildFleetSummary(fleetSummary(sources, ui.runs), nowS));
  const wrap = el('div', {cls: 'table-wrap'});
  const table = el('table', {cls: 'rs-table', attrs: {'data-role': 'sources'}});
  const headRow = el('tr');
  for (const label of ['Source', 'State', 'Last sync', 'Last result', 'Next sync', 'Error']) {
    headRow.append(el('th', {text: label, attrs: {scope: 'col'}}));
  }
  headRow.append(el('th', {attrs: {scope: 'col'}}, [el('span', {cls: 'sr-only', text: 'Action'})]));
  table.append(el('thead', {}, [headRow]));
  const tbody = el('tbody', {attrs: {'data-role': 'sources-body'}});
  const rowUi = {...ui, count: sources.length};
  for (const s of orderSources(sources)) tbody.append(buildSourceRow(s, nowS, rowUi));
  table.append(tbody);
  wrap.append(table);
  section.append(wrap);
  return section;
}

// ---------------------------------------------------------------------------------------
// Runs.

/**
 * The runs section skeleton: heading with count, filter box, table with sortable headers
 * and an empty tbody. index.js builds it once and keeps it (so the filter keeps its focus
 * and selection); it fills the body with buildRunRows() and the count with runsCountText().
 */
export function buildRunsSection(sort = DEFAULT_SORT, filterText = '') {
  const section = el('section', {cls: 'rs-section', attrs: {'aria-labelledby': 'rs-runs-h'}});
  const head = el('div', {cls: 'rs-runs-head'});
  const h2 = el('h2', {attrs: {id: 'rs-runs-h'}});
  h2.append('Runs ', el('span', {cls: 'muted count', attrs: {'data-role': 'runs-count'}}));
  head.append(h2);
  const filter = el('input', {cls: 'filter', attrs: {'type': 'search', 'placeholder': 'Filter runs',
    'aria-label': 'Filter runs by name or source', 'data-role': 'filter', 'spellcheck': 'false',
    'autocomplete': 'off'}});
  filter.value = filterText;
  head.append(filter);
  section.append(head);

  const wrap = el('div', {cls: 'table-wrap'});
  const table = el('table', {cls: 'rs-table rs-runs', attrs: {'data-role': 'runs'}});
  const headRow = el('tr');
  for (const col of RUN_COLUMNS) {
    const th = el('th', {attrs: {scope: 'col'}, cls: col.numeric ? 'num' : ''});
    if (col.sortable) {
      th.append(el('button', {cls: 'sort', attrs: {'type': 'button', 'data-sort': col.key,
        'data-key': `sort:${col.key}`}}, [
        el('span', {text: col.label}),
        el('span', {cls: 'arrow', attrs: {'aria-hidden': 'true'}}),
      ]));
    } else {
      th.textContent = col.label;
    }
    headRow.append(th);
  }
  table.append(el('thead', {}, [headRow]));
  table.append(el('tbody', {attrs: {'data-role': 'runs-body'}}));
  wrap.append(table);
  section.append(wrap);
  section.append(el('div', {cls: 'rs-pager', attrs: {'data-role': 'pager'}}));
  applySort(table, sort);
  return section;
}

// Runs shown at once: the rest are a click away, so 10,000 runs cost what 100 do.
export const RUNS_PAGE_SIZE = 100;

/** The page to show (clamped) and its first and last index, for `total` matching runs. */
export function runsPage(page, total, size = RUNS_PAGE_SIZE) {
  const pages = Math.max(1, Math.ceil(total / size));
  const at = Math.min(Math.max(0, page | 0), pages - 1);
  return {page: at, pages, from: at * size, to: Math.min(total, (at + 1) * size)};
}

/** "101–200 of 10,000" with previous / next buttons; empty when everything fits. */
export function buildRunsPager(p, total) {
  const box = el('div', {cls: 'rs-pager', attrs: {'data-role': 'pager'}});
  if (p.pages <= 1) return box;
  const n = (x) => x.toLocaleString('en-US');
  box.append(el('span', {cls: 'muted', attrs: {'data-role': 'page-range'},
    text: `${n(p.from + 1)}\u2013${n(p.to)} of ${n(total)}`}));
  const button = (label, action, disabled, ariaLabel) => el('button', {cls: 'btn btn-small',
    text: label, attrs: {'type': 'button', 'data-action': action, 'data-key': action,
      'aria-label': ariaLabel, 'aria-disabled': disabled ? 'true' : null}});
  box.append(button('\u2039 Previous', 'page-prev', p.page === 0, 'Previous page of runs'),
      button('Next \u203a', 'page-next', p.page >= p.pages - 1, 'Next page of runs'));
  return box;
}

/** Mark the sorted column: aria-sort on its <th>, an arrow in its button. */
export function applySort(table, sort) {
  for (const button of table.querySelectorAll('button[data-sort]')) {
    const th = button.parentElement;
    const active = button.getAttribute('data-sort') === sort.key;
    if (active) th.setAttribute('aria-sort', sort.dir === 'desc' ? 'descending' : 'ascending');
    else th.removeAttribute('aria-sort');
    button.querySelector('.arrow').textContent = active ? (sort.dir === 'desc' ? ' \u25bc' : ' \u25b2') : '';
  }
}

/** "(12)" or "(3 of 12)". */
export function runsCountText(shown, total) {
  return shown === total ? `(${total})` : `(${shown} of ${total})`;
}

/** `text` with command-line flags (`--reload_interval 0`) in <code> that does not wrap. */
export function textWithFlags(text) {
  const span = document.createElement('span');
  const flag = /--[A-Za-z][\w-]*(?:=[^\s),;]+| \d+(?=[\s.,;)]|$))?/g;
  let at = 0;
  for (const m of text.matchAll(flag)) {
    span.append(text.slice(at, m.index), el('code', {cls: 'flag', text: m[0]}));
    at = m.index + m[0].length;
  }
  span.append(text.slice(at));
  return span;
}

/** One runs-table row. */
export function buildRunRow(r, nowS) {
  const tr = document.createElement('tr');
  tr.setAttribute('data-run', r.run);

  const name = document.createElement('td');
  name.className = 'col-run';
  name.textContent = r.run;
  tr.appendChild(name);

  const source = document.createElement('td');
  source.textContent = r.source ?? '\u2014';
  tr.appendChild(source);

  const age = document.createElement('td');
  age.className = 'col-age';
  age.appendChild(ageSpan(r.source_wall_time, nowS, {fresh: true}));
  tr.appendChild(age);

  const step = document.createElement('td');
  step.className = 'num';
  step.setAttribute('data-role', 'step');
  step.textContent = isNum(r.source_step) ? String(r.source_step) : '\u2014';
  tr.appendChild(step);

  const published = document.createElement('td');
  published.appendChild(ageSpan(r.published_unix_s, nowS));
  tr.appendChild(published);

  const state = document.createElement('td');
  const badge = document.createElement('span');
  const stateKey = Object.prototype.hasOwnProperty.call(RUN_STATE_LABELS, r.state) ? r.state : 'unknown';
  badge.className = `badge run-${stateKey}`;
  badge.setAttribute('data-role', 'run-state');
  badge.setAttribute('data-state', stateKey);
  badge.textContent = runStateLabel(r.state);
  // "live" keeps its sentence here (the Detail cell stays empty); others say what TB has.
  if (r.state === 'live' && r.state_detail) {
    badge.title = r.state_detail;
  } else if (isNum(r.loaded_wall_time)) {
    badge.title = `TensorBoard has events up to ${formatLocalTime(r.loaded_wall_time)}`;
  }
  state.appendChild(badge);
  // Live but a reload or so behind (steady writing): say how far, beside the badge.
  if (r.state === 'live' && isNum(r.behind_s) && r.behind_s >= 1) {
    state.append(' ', el('span', {cls: 'muted small', attrs: {'data-role': 'behind'},
      text: `${formatDuration(r.behind_s)} behind`}));
  }
  tr.appendChild(state);

  const detail = document.createElement('td');
  detail.className = 'col-detail small';
  if (r.source_failing) {
    detail.appendChild(el('div', {cls: 'err-message', text: `Source ${r.source} is failing: ` +
      'the source may have newer events (see Sources).', attrs: {'data-role': 'source-failing'}}));
  }
  // Other states say why, with flags kept on one line.
  if (r.state_detail && r.state !== 'live') detail.appendChild(textWithFlags(r.state_detail));
  if (r.state === 'waiting' && isNum(r.loaded_wall_time) && isNum(r.source_wall_time) &&
      r.source_wall_time > r.loaded_wall_time) {
    detail.appendChild(el('div', {cls: 'muted', attrs: {'data-role': 'lag'},
      text: `TensorBoard is ${formatDuration(r.source_wall_time - r.loaded_wall_time)} behind.`}));
  }
  if (r.rewrite && isNum(r.rewrite.unix_s)) {
    // Where the old copy went: nothing is deleted, and people look for it here.
    const w = el('div', {cls: 'muted', attrs: {'data-role': 'rewrite'}});
    const by = r.rewrite.by === 'another process' ? ' (published by another process)' : '';
    w.append(`${r.rewrite.file || 'a file'} rewritten `, ageSpan(r.rewrite.unix_s, nowS),
        `${by}; old copy: `, el('code', {text: r.rewrite.kept_at || '?'}));
    detail.appendChild(w);
  } else if (isNum(r.rewritten_unix_s)) {
    const w = document.createElement('div');
    w.className = 'muted';
    w.append('source rewrote a file ', ageSpan(r.rewritten_unix_s, nowS));
    detail.appendChild(w);
  }
  tr.appendChild(detail);
  return tr;
}

/**
 * Table rows for runs already filtered and sorted, as one DocumentFragment (one reflow).
 *
 * @param {Array<object>} runs
 * @param {number} nowS server clock
 * @param {{total?: number, filterText?: string}} info to word the empty row
 */
export function buildRunRows(runs, nowS, info = {}) {
  const fragment = document.createDocumentFragment();
  if (!runs.length) {
    const tr = el('tr', {cls: 'empty-row'});
    const text = info.total ?
      `No runs match \u201c${info.filterText || ''}\u201d.` :
      'No runs published yet; click Sync.';
    tr.append(el('td', {text, attrs: {'colspan': RUN_COLUMNS.length, 'data-role': 'no-runs'}}));
    fragment.append(tr);
    return fragment;
  }
  for (const r of runs) fragment.appendChild(buildRunRow(r, nowS));
  return fragment;
}
