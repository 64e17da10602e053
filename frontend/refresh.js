// Refresh TensorBoard's own dashboards after a sync, as a click on its reload button would.
//
// TensorBoard 2.21 reloads the charts a user looks at only on a click on ⟳ in its header, or
// with Settings -> "Reload data" on (off in a fresh browser profile, and 30 s at the
// fastest). That button (the `app-header-reload` component) dispatches TensorBoard's own
// "[Core] User Triggered Reload" action, which the Scalars, Time Series and every other
// dashboard follow; TensorBoard has no other public way in. Our iframe is same-origin, and
// TensorBoard keeps it (collapsed) while another dashboard is shown, so this keeps working on
// whatever dashboard the user looks at. While the Sync tab itself is shown the button is
// disabled (our plugin asks TensorBoard not to reload it): the refresh then waits until the
// user switches to a dashboard.
//
// When to click: when a run's published time moves (at once with the legacy loader, one
// reload period later with the fast loader), and when what TensorBoard serves moves (the
// server's loaded-data check). At most one click per MIN_REFRESH_MS. Nothing here touches our own DOM; index.js shows the result.
//
// Clicking works only in a browser tab where the Sync tab was opened. So while the choice
// is on, TensorBoard's own persisted "Reload data" setting is turned on too (its
// `_tb_global_settings` in localStorage, which TensorBoard reads when a page loads): every
// TensorBoard page opened later in this browser reloads by itself, every 30 s at the
// fastest. That is done once per choice (a user who turns it off in TensorBoard is not
// overruled) and undone when the choice goes off.

export const MIN_REFRESH_MS = 2500;
export const STORAGE_KEY = 'tb-rsync.refresh-charts';
const BUTTON_SELECTOR = 'app-header-reload button';
export const TB_SETTINGS_KEY = '_tb_global_settings';
// What autoReload was before we turned it on (JSON {autoReload: true|false|null}); its
// presence means "done for this choice".
export const RELOAD_DATA_KEY = 'tb-rsync.reload-data-before';
// TensorBoard's fastest (and default) reload period; it ignores a saved period not above it.
export const TB_MIN_RELOAD_MS = 30000;

function readJson(storage, key) {
  try {
    const value = JSON.parse(storage.getItem(key));
    return value && typeof value === 'object' ? value : null;
  } catch (e) {
    return null;
  }
}

/** Turn on TensorBoard's saved "Reload data", once per choice; remember what it was. */
export function turnOnReloadData(storage = safeStorage()) {
  if (!storage || storage.getItem(RELOAD_DATA_KEY) !== null) return;
  const settings = readJson(storage, TB_SETTINGS_KEY) || {};
  const before = typeof settings.autoReload === 'boolean' ? settings.autoReload : null;
  storage.setItem(TB_SETTINGS_KEY, JSON.stringify({...settings, autoReload: true}));
  storage.setItem(RELOAD_DATA_KEY, JSON.stringify({autoReload: before}));
}

/** Put TensorBoard's saved "Reload data" back as it was before turnOnReloadData(). */
export function restoreReloadData(storage = safeStorage()) {
  const before = storage && readJson(storage, RELOAD_DATA_KEY);
  if (!before) return;
  const settings = readJson(storage, TB_SETTINGS_KEY) || {};
  if (typeof before.autoReload === 'boolean') settings.autoReload = before.autoReload;
  else delete settings.autoReload;
  storage.setItem(TB_SETTINGS_KEY, JSON.stringify(settings));
  storage.removeItem(RELOAD_DATA_KEY);
}

/** TensorBoard's saved reload period in seconds when its "Reload data" is on, else null. */
export function savedReloadPeriodS(storage = safeStorage()) {
  const settings = storage && readJson(storage, TB_SETTINGS_KEY);
  if (!settings || settings.autoReload !== true) return null;
  const ms = settings.autoReloadPeriodInMs;
  return (Number.isFinite(ms) && ms > TB_MIN_RELOAD_MS ? ms : TB_MIN_RELOAD_MS) / 1000;
}

/** The user's saved choice: true, false, or null (never chosen: follow the default). */
export function loadChoice(storage = safeStorage()) {
  const saved = storage ? storage.getItem(STORAGE_KEY) : null;
  return saved === 'on' ? true : saved === 'off' ? false : null;
}

export function saveChoice(on, storage = safeStorage()) {
  if (storage) storage.setItem(STORAGE_KEY, on ? 'on' : 'off');
}

function safeStorage() {
  try {
    return window.localStorage;
  } catch (e) {
    return null; // storage disabled: the choice lasts until the page reloads
  }
}

/** On by default while automatic sync is on (nobody clicks then, so nobody sees ⟳). */
export function defaultChoice(status) {
  return !!(status && typeof status.interval_s === 'number' && status.interval_s > 0);
}

/**
 * What the status says changed since `prev` (null at first): {published, loaded} booleans
 * and the new marks to keep. The first status only sets the marks: TensorBoard loaded the
 * page with what it serves now.
 */
export function dataChanges(prev, status) {
  const runs = (status && status.runs) || [];
  const mark = {
    published: Math.max(0, ...runs.map((r) => r.published_unix_s || 0)),
    loaded: runs.map((r) => `${r.run}=${r.loaded_wall_time}`).join('|'),
  };
  if (!prev) return {published: false, loaded: false, mark};
  return {published: mark.published > prev.published, loaded: mark.loaded !== prev.loaded, mark};
}

/**
 * The ⟳ button of TensorBoard's page around this iframe: {button} when there, or
 * {missing: why} when this page is not inside TensorBoard 2.x's UI (or it changed).
 */
export function findReloadButton(win = window) {
  let doc;
  try {
    if (win.parent === win) return {missing: 'the Sync tab is open on its own page'};
    doc = win.parent.document;
  } catch (e) {
    return {missing: 'TensorBoard\'s page is not reachable from the Sync tab'};
  }
  const button = doc.querySelector(BUTTON_SELECTOR);
  return button ? {button} : {missing: 'TensorBoard\'s reload button was not found'};
}

/**
 * Decides when to click and clicks. `tick()` is called every second and after each status.
 *
 * State for the view: `enabled`, `lastClickMs`, `clicks`, `missing` (why it cannot work).
 */
export class ChartRefresher {
  constructor({now = () => Date.now(), find = () => findReloadButton(),
               storage = safeStorage()} = {}) {
    this.now = now;
    this.find = find;
    this.storage = storage;
    this.choice = loadChoice(storage);
    this.enabled = false;
    this.mark = null;
    this.dueMs = [];  // times at which a click is wanted, oldest first
    this.lastClickMs = -Infinity;
    this.clicks = 0;
    this.missing = null;
  }

  /** Apply a status answer: the effective choice and any click it calls for. */
  onStatus(status) {
    this.enabled = this.choice === null ? defaultChoice(status) : this.choice;
    if (this.enabled) turnOnReloadData(this.storage);
    const changes = dataChanges(this.mark, status);
    this.mark = changes.mark;
    if (!this.enabled) {
      this.dueMs = [];
      return;
    }
    const now = this.now();
    const periodS = (status && status.reload_period_s) || 0;
    // The legacy loader serves a publish at once (tb-rsync reloaded the run); the fast
    // loader at its next reload: click once that has passed. A change in what TensorBoard
    // serves (the server's loaded-data check) is worth a click at once.
    if (changes.published) this.dueMs.push(now + (periodS > 0 ? periodS * 1000 + 300 : 0));
    if (changes.loaded) this.dueMs.push(now);
    this.dueMs.sort((a, b) => a - b);
    this.tick();
  }

  setChoice(on) {
    this.choice = on;
    this.enabled = on;
    saveChoice(on, this.storage);
    if (on) turnOnReloadData(this.storage);
    else restoreReloadData(this.storage);
    if (!on) this.dueMs = [];
  }

  /** True while a status poll could lead to a click: poll even when the tab is hidden. */
  wantsPolling() {
    return this.enabled;
  }

  tick() {
    if (!this.enabled || !this.dueMs.length) return;
    const now = this.now();
    if (this.dueMs[0] > now || now - this.lastClickMs < MIN_REFRESH_MS) return;
    const found = this.find();
    this.missing = found.missing || null;
    if (!found.button) {
      this.dueMs = [];
      return;
    }
    // Disabled while the Sync tab (which asks not to be reloaded) is shown: keep the wish
    // until the user looks at a dashboard (index.js ticks every second).
    if (found.button.disabled) return;
    found.button.click();
    this.lastClickMs = now;
    this.clicks += 1;
    this.dueMs = this.dueMs.filter((t) => t > now);
  }

  /** When the next click may happen (ms from now), or null: index.js ticks then. */
  nextTickInMs() {
    if (!this.enabled || !this.dueMs.length) return null;
    return Math.max(0, this.dueMs[0] - this.now(), this.lastClickMs + MIN_REFRESH_MS - this.now());
  }
}
