// Formatting for the Sync tab: durations, ages, sizes, state and phase labels, and the
// filtering and sorting of runs. Pure: plain values in, strings (or sorted copies) out, no
// DOM, so the view modules and the tests share one wording.

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
export const WAITING_PHASES = new Set(['connecting', 'reloading']);

const LOADER_LABELS = {
  legacy: 'legacy loader (--load_fast=false)',
  fast: 'fast loader (data server)',
  none: 'no TensorBoard',
};

export const DEFAULT_SORT = Object.freeze({key: 'name', dir: 'asc'});

const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: 'base'});

export function isNum(x) {
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

/** The text of an age span: "3 min ago" (mode 'ago'), "in 12 s" ('in'), "retrying in 8 s". */
export function ageText(unixS, nowS, mode) {
  if (mode === 'in') return formatIn(unixS - nowS);
  if (mode === 'retry') {
    const s = unixS - nowS;
    return !isNum(s) || s < 1 ? 'retrying now' : `retrying in ${formatDuration(s)}`;
  }
  return formatAge(nowS - unixS);
}

/** A run state the tab knows ('live', 'waiting', ...), else 'unknown': badge classes. */
export function runStateKey(state) {
  return Object.prototype.hasOwnProperty.call(RUN_STATE_LABELS, state) ? state : 'unknown';
}

export function runStateLabel(state) {
  return RUN_STATE_LABELS[runStateKey(state)];
}

/** What the header says about TensorBoard's loader ('legacy', 'fast', 'none'). */
export function loaderLabel(loader) {
  return LOADER_LABELS[loader] || String(loader);
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

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// ---------------------------------------------------------------------------------------
// Filtering and sorting of runs.

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
