// The top of the Sync tab: the header (title, logdir, loader, alerts, discovery rules, "Sync
// all"), the chart refresh choice, and the connection notice with its retry countdown.

import {el, ageSpan, setAge, syncButton} from './dom.js';
import {ageText, formatDuration, isNum, loaderLabel, plural} from './format.js';

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
          el('span', {text: loaderLabel(status.loader)}));
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
