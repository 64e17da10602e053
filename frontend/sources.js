// The sources table of the Sync tab: the fleet summary line, one row per source (cell by
// cell, so index.js rebuilds only the cells whose data changed; one-line rows for a fleet),
// the page shown when no source is configured, and what a screen reader hears when a
// source's state changes.

import {el, ageSpan, syncButton} from './dom.js';
import {WAITING_PHASES, formatBytes, formatDuration, formatRate, isNum, phaseLabel, plural,
  sourceStateLabel} from './format.js';

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
