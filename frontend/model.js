// Talking to the plugin (docs/API.md): GET status, POST sync, and a poller.
//
// URLs are relative: inside TensorBoard's plugin iframe the document's <base> is
// "plugin/rsync/", so 'status' means /data/plugin/rsync/status. Functions return plain
// objects; nothing here touches the DOM.

export const FAST_POLL_MS = 1000; // while a source is syncing or queued
export const SLOW_POLL_MS = 5000; // otherwise
export const MAX_BACKOFF_MS = 30000; // longest wait between retries when unreachable
export const REQUEST_TIMEOUT_MS = 10000; // a status request unanswered this long is a network error

/** A refused or failed request: `status` is the HTTP code (0 for a network error). */
export class RequestError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = 'RequestError';
    this.status = status;
  }
}

async function errorText(response) {
  try {
    const text = (await response.text()).trim();
    if (!text) return '';
    try {
      const body = JSON.parse(text);
      if (body && typeof body === 'object') return String(body.error || body.message || text);
    } catch (e) { /* not JSON: TensorBoard's plain-text errors */ }
    return text.slice(0, 300);
  } catch (e) {
    return '';
  }
}

/** GET status -> the status object. Throws RequestError. */
export async function fetchStatus({fetchImpl = fetch, signal} = {}) {
  let response;
  try {
    response = await fetchImpl('status', {cache: 'no-store', credentials: 'same-origin', signal});
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new RequestError('network error', 0);
  }
  if (!response.ok) {
    const text = await errorText(response);
    throw new RequestError(`HTTP ${response.status}${text ? `: ${text}` : ''}`, response.status);
  }
  try {
    return await response.json();
  } catch (e) {
    throw new RequestError('the status answer was not JSON', response.status);
  }
}

/**
 * POST sync for one source (name) or all (null) -> {started: [...], joined: [...]}.
 * Throws RequestError with a sentence for the user (unknown source, refused, unreachable).
 * A request unanswered after `timeoutMs` is aborted, so the clicked button comes back.
 */
export async function requestSync(name = null,
                                  {fetchImpl = fetch, timeoutMs = REQUEST_TIMEOUT_MS} = {}) {
  const body = name === null || name === undefined ? {} : {source: name};
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    let response;
    try {
      response = await fetchImpl('sync', {
        method: 'POST',
        cache: 'no-store',
        credentials: 'same-origin',
        headers: {'X-TB-Rsync': '1', 'Content-Type': 'application/json'},
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (e) {
      throw new RequestError(controller.signal.aborted ?
        `Could not ask for a sync: TensorBoard did not answer within ${Math.ceil(timeoutMs / 1000)} s.` :
        'Could not ask for a sync: TensorBoard is not reachable.', 0);
    }
    if (response.status === 202 || response.ok) {
      try {
        const answer = await response.json();
        return {started: (answer && answer.started) || [], joined: (answer && answer.joined) || []};
      } catch (e) {
        return {started: [], joined: []};
      }
    }
    const text = await errorText(response);
    const what = name === null || name === undefined ? 'all sources' : `"${name}"`;
    throw new RequestError(`Sync of ${what} was refused (HTTP ${response.status})` +
        `${text ? `: ${text}` : '.'}`, response.status);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * True when nobody can see the tab: a hidden browser tab, or TensorBoard showing another
 * dashboard (it keeps our iframe but collapses it to max-height 0, and the document stays
 * "visible", so the iframe's own height is the signal).
 */
export function pageHidden() {
  if (typeof document === 'undefined') return false;
  return document.visibilityState === 'hidden' || window.innerHeight === 0;
}

/**
 * How often to ask while idle when sources sync on a timer: twice per shortest interval
 * (1 to 5 s), so "next sync" and freshness are never a whole sync behind. Null when no
 * source has a timer (keep the default).
 */
export function idlePollMs(status) {
  const intervals = ((status && status.sources) || []).map((s) => s.interval_s)
      .filter((s) => typeof s === 'number' && s > 0);
  if (!intervals.length) return null;
  return Math.min(SLOW_POLL_MS, Math.max(FAST_POLL_MS, Math.min(...intervals) * 500));
}

/** True while any source is syncing or queued: the poller then asks every second. */
export function isBusy(status) {
  return !!(status && Array.isArray(status.sources) &&
    status.sources.some((s) => s.state === 'syncing' || s.state === 'queued'));
}

/**
 * Polls `status` with setTimeout, one request at a time.
 *
 * Every request is aborted after `timeoutMs` (REQUEST_TIMEOUT_MS): a hung request counts as
 * a network error (backoff, onError with status 0), so one lost answer never stops polling.
 *
 * Each request gets a sequence number; an answer is applied only if it is newer than the
 * last one applied and its server clock did not go backwards, so a slow answer that lands
 * after a newer one (or after stop()) is dropped. While a request is in flight, poll() only
 * marks that another is wanted; it is sent when the current one settles.
 *
 * Delays: FAST_POLL_MS while busy, SLOW_POLL_MS otherwise; after failures 1 s, 2 s, 4 s ...
 * up to MAX_BACKOFF_MS. While isHidden() (nobody can see the tab) nothing is scheduled at
 * all: the poller sleeps until poll() is called again (index.js does so when the tab shows).
 */
export class Poller {
  /**
   * @param {{onStatus: function(object, {requestedAtMs: number, seq: number}),
   *     onError: function({failures: number, retryInMs: number, error: string, status: number}),
   *     fetch?: function({signal: AbortSignal}): Promise<object>, fastMs?: number,
   *     slowMs?: number, maxBackoffMs?: number, timeoutMs?: number,
   *     timers?: {setTimeout, clearTimeout}, now?: function(): number,
   *     isHidden?: function(): boolean}} options
   */
  constructor(options) {
    this.onStatus = options.onStatus;
    this.onError = options.onError || (() => {});
    this.fetch = options.fetch || ((opts) => fetchStatus(opts));
    this.fastMs = options.fastMs ?? FAST_POLL_MS;
    this.slowMs = options.slowMs ?? SLOW_POLL_MS;
    this.maxBackoffMs = options.maxBackoffMs ?? MAX_BACKOFF_MS;
    this.timeoutMs = options.timeoutMs ?? REQUEST_TIMEOUT_MS;
    this.timers = options.timers || {setTimeout: (f, ms) => setTimeout(f, ms),
      clearTimeout: (id) => clearTimeout(id)};
    this.now = options.now || (() => Date.now());
    this.isHidden = options.isHidden || pageHidden;
    this.seq = 0;
    this.appliedSeq = 0;
    this.appliedServerS = -Infinity;
    this.inFlight = false;
    this.wanted = false;
    this.timer = null;
    this.abortInFlight = null; // aborts the request in flight (stop(), timeout)
    this.sleeping = false; // hidden: nothing scheduled until poll()
    this.failures = 0;
    this.busy = false;
    this.running = false;
    this.fastUntilMs = 0;
    this.inFlightCount = 0;
    this.staleStreak = 0;
    this.stats = {requests: 0, dropped: 0, maxInFlight: 0};
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.poll();
  }

  stop() {
    this.running = false;
    this.seq += 1; // whatever is in flight is now stale
    this._clear();
    if (this.abortInFlight) this.abortInFlight();
  }

  /** Poll fast for `ms` even if the next answer does not show a sync yet (after a click). */
  hurry(ms = 5000) {
    this.fastUntilMs = Math.max(this.fastUntilMs, this.now() + ms);
  }

  /** Ask now (or right after the request in flight). */
  poll() {
    if (!this.running) return;
    this.sleeping = false;
    this._clear();
    if (this.inFlight) {
      this.wanted = true;
      return;
    }
    this._send();
  }

  _clear() {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
  }

  _schedule(ms) {
    this._clear();
    if (!this.running) return;
    if (this.isHidden()) {
      this.sleeping = true;
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      if (this.isHidden()) this.sleeping = true; // hidden meanwhile: wait for poll()
      else this.poll();
    }, ms);
  }

  nextDelayMs() {
    if (this.failures > 0) {
      return Math.min(this.maxBackoffMs, 1000 * 2 ** (this.failures - 1));
    }
    if (this.busy || this.now() < this.fastUntilMs) return this.fastMs;
    return this.slowMs;
  }

  async _send() {
    this.inFlight = true;
    this.wanted = false;
    const seq = ++this.seq;
    const requestedAtMs = this.now();
    this.stats.requests += 1;
    this.inFlightCount += 1;
    this.stats.maxInFlight = Math.max(this.stats.maxInFlight, this.inFlightCount);
    let status = null;
    let error = null;
    const controller = typeof AbortController === 'undefined' ? null : new AbortController();
    let timeoutId = null;
    let giveUp = null;
    // Settles when the request is given up: timeout or stop(). Racing it (not only aborting
    // the signal) also frees the poller from a fetch that ignores its signal.
    const givenUp = new Promise((resolve, reject) => {
      giveUp = (err) => {
        if (controller) controller.abort();
        reject(err);
      };
    });
    this.abortInFlight = () => giveUp(new RequestError('request cancelled', 0));
    if (this.timeoutMs > 0) {
      timeoutId = this.timers.setTimeout(() => {
        timeoutId = null;
        giveUp(new RequestError(`no answer within ${Math.round(this.timeoutMs / 1000)} s`, 0));
      }, this.timeoutMs);
    }
    let request;
    try {
      request = this.fetch({signal: controller ? controller.signal : undefined});
    } catch (e) {
      request = Promise.reject(e);
    }
    try {
      status = await Promise.race([request, givenUp]);
    } catch (e) {
      error = e || new Error('request failed');
      // An aborted fetch (ours) is a network error, never an HTTP status.
      if (error.name === 'AbortError') error = new RequestError('request aborted', 0);
    }
    if (timeoutId !== null) this.timers.clearTimeout(timeoutId);
    this.abortInFlight = null;
    this.inFlight = false;
    this.inFlightCount -= 1;
    if (!this.running || seq !== this.seq) {
      // stop() ran meanwhile: drop the answer.
      this.stats.dropped += 1;
      if (this.running && this.wanted) this.poll();
      return;
    }
    if (error) {
      this.failures += 1;
      const retryInMs = this.nextDelayMs();
      this.onError({failures: this.failures, retryInMs, error: String(error.message || error),
        status: error.status || 0});
      this._schedule(this.wanted ? 0 : retryInMs);
      return;
    }
    const serverS = status && typeof status.server_unix_s === 'number' ? status.server_unix_s : null;
    const older = seq <= this.appliedSeq ||
      (serverS !== null && serverS < this.appliedServerS && this.staleStreak < 2);
    if (older) {
      // Out of order: a newer answer is already on screen. (A server clock that went back
      // for good, e.g. set by NTP, is accepted after a few answers instead of freezing.)
      this.stats.dropped += 1;
      this.staleStreak += 1;
    } else {
      this.staleStreak = 0;
      this.appliedSeq = seq;
      if (serverS !== null) this.appliedServerS = serverS;
      this.failures = 0;
      this.busy = isBusy(status);
      this.onStatus(status, {requestedAtMs, seq});
    }
    this._schedule(this.wanted ? 0 : this.nextDelayMs());
  }
}
