// The runs table of the Sync tab: its skeleton (count, filter box, sortable headers), one
// row per run, the empty row, and the pager. Filtering and sorting are in format.js.

import {el, ageSpan} from './dom.js';
import {DEFAULT_SORT, formatDuration, formatLocalTime, isNum, runStateKey,
  runStateLabel} from './format.js';

const RUN_COLUMNS = [
  {key: 'name', label: 'Run', sortable: true},
  {key: 'source', label: 'Source', sortable: true},
  {key: 'age', label: 'Newest event', sortable: true},
  {key: 'step', label: 'Step', sortable: true, numeric: true},
  {key: 'published', label: 'Published', sortable: false},
  {key: 'state', label: 'TensorBoard', sortable: true},
  {key: 'detail', label: 'Detail', sortable: false},
];

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
  const stateKey = runStateKey(r.state);
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
