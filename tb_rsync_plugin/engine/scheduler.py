"""When and what to sync: requests, timers, backoff and slots. Runs no rsync itself.

One scheduler serves TensorBoard and the CLI. It owns, per source, the next timed sync, the
consecutive failures and the run of no-change syncs; it starts cycles (a callable given to
it, `service.SyncService.cycle`) on threads of its own, within named bounds:

- `max_parallel`: cycles at once in the main lane;
- a per-host limit (`SyncConfig.host_limit_for`, default 3): cycles at once against one
  host, which keeps it under sshd's MaxStartups and MaxSessions;
- a slow lane, as large as the main one, for sources whose last cycle failed and for cycles
  that have run longer than `SLOW_AFTER_S`: a hung host retries there, so it never holds a
  slot a healthy source is waiting for. (A host that hangs for the first time holds a main
  slot until ssh's ConnectTimeout or `SLOW_AFTER_S`, whichever comes first.)

Requests never block, and each one is served by a cycle that lists the source after it: a
source already queued is joined; a source whose cycle is running (it may have listed before
the request) is queued again the moment that cycle ends, once however many requests came
meanwhile. So twenty clicks make at most two cycles, and none is lost. Queued sources start
in request order, skipping those whose host is full (no head-of-line blocking). Timers run on
the monotonic clock; the tab is told wall-clock times.

A source a change probe watches (probes.py) is synced when the probe reports a change
(`poke`), on a click, and at a slow safety interval whatever the probe says (`SAFETY_S`, 5
min, or its interval if longer; each source a few percent earlier by a spread fixed by its
name, so a fleet's safety syncs do not come in one burst); idle back-off does not apply to
it: watching costs no process per check. (At 10x the interval, a 100-source fleet at 1 s
spent most of its idle CPU on safety syncs: docs/BENCHMARKS.md, B10.) A change reported while the source's cycle runs (that cycle may
have listed already) queues one more cycle after it.

Backoff, both capped and both reset by a click:
- a failing source retries after `interval * 2**(failures-1)` (at least `MIN_RETRY_S`, at
  most `max(RETRY_CAP_S, interval)`); sources synced only on request are not retried;
- a source whose last `IDLE_AFTER` syncs changed nothing is synced every 2x its interval,
  after twice as many every 4x (`IDLE_MAX_FACTOR`); the first change returns it to 1x.
"""

import dataclasses
import logging
import threading
import time
import zlib
from typing import Optional

logger = logging.getLogger(__name__)

SLOW_AFTER_S = 30.0
MIN_RETRY_S = 5.0
RETRY_CAP_S = 300.0
IDLE_AFTER = 5
IDLE_MAX_FACTOR = 4
SAFETY_S = 300.0
SAFETY_SPREAD = 0.1  # safety syncs come up to this fraction early, by source
_TICK_S = 1.0  # the dispatcher looks again at least this often (slow-lane moves)


def retry_delay_s(interval_s, failures):
    """The wait before the next try after `failures` failed ones in a row (also `push`'s)."""
    delay = max(interval_s, MIN_RETRY_S) * 2 ** (failures - 1)
    return min(delay, max(RETRY_CAP_S, interval_s))


@dataclasses.dataclass(frozen=True)
class CycleEnd:
    """What the scheduler tells `on_end` listeners after each cycle.

    Attributes:
      name: the source.
      error: the exception the cycle raised (a `SyncError` for known failures), or None.
      changed: the cycle published something (False after a failure).
      failures: consecutive failures including this one (0 after a success).
      recovered: it succeeded after `previous_failures` failures.
      retry_in_s: when the next timed attempt comes, or None (on request only).
      result: what the cycle returned (the service's outcome), or None.
      stopping: the scheduler was stopping (an error is then most likely the cancellation).
      duration_s: how long the cycle ran, on the scheduler's monotonic clock.
    """

    name: str
    error: Optional[BaseException]
    changed: bool
    failures: int
    previous_failures: int
    retry_in_s: Optional[float]
    result: object = None
    stopping: bool = False
    duration_s: float = 0.0

    @property
    def recovered(self):
        return self.error is None and self.previous_failures > 0


@dataclasses.dataclass
class _Entry:
    name: str
    host: Optional[str]
    interval_s: float
    host_limit: int
    queued_seq: Optional[int] = None  # request order while queued
    lane: Optional[str] = None  # "main" | "slow" while running
    started_mono: float = 0.0
    due_mono: Optional[float] = None  # the next timed sync
    failures: int = 0
    idle_streak: int = 0
    probed: bool = False  # a change probe watches it: synced on change + safety interval
    retired: bool = False  # removed from the configuration; dropped after its cycle
    again: bool = False  # asked for while running: queued again when that cycle ends

    @property
    def busy(self):
        return self.queued_seq is not None or self.lane is not None


class Scheduler:
    """Decides when each source syncs and runs its cycles within the limits.

    Args:
      cycle: `cycle(name)` runs one blocking sync of a source and returns an object with a
        boolean `changed`; it raises on failure. Called on the scheduler's threads.
      state: receives `try_queue(name)`, `abandon(name)` and
        `set_schedule(name, delay_s, retry, idle_factor)` for the tab.
      max_parallel: cycles at once in each lane (main and slow).
      on_end: listeners called with a `CycleEnd` after every cycle (logging, CLI lines).
    """

    def __init__(self, cycle, state, max_parallel, on_end=(), clock=time.monotonic):
        self._cycle = cycle
        self._state = state
        self._max_parallel = max_parallel
        self._on_end = list(on_end)
        self._clock = clock
        self._cond = threading.Condition()
        self._entries = {}
        self._seq = 0
        self._timers = False
        self._stopping = False
        self._thread = None

    # --- configuration -----------------------------------------------------------------
    def set_sources(self, sources, interval_for, host_limit_for):
        """Add new sources, drop removed ones (after their running cycle), update the rest.

        Args:
          sources: `config.Source`s.
          interval_for: source -> automatic sync period in seconds (0: on request only).
          host_limit_for: source -> how many cycles may run against its host at once.
        """
        with self._cond:
            wanted = {s.name: s for s in sources}
            for name, entry in list(self._entries.items()):
                if name not in wanted:
                    entry.retired = True
                    entry.due_mono = None
                    if entry.lane is None:  # idle or only queued: nothing to wait for
                        del self._entries[name]
            now = self._clock()
            for source in sources:
                interval = interval_for(source)
                entry = self._entries.get(source.name)
                if entry is None:
                    entry = self._entries[source.name] = _Entry(
                        source.name, source.host, interval, host_limit_for(source))
                    entry.due_mono = now if interval > 0 and self._timers else None
                else:
                    # Removed, then added back while its cycle still runs: the same entry
                    # goes on (a second entry would run a second cycle of the source).
                    entry.retired = False
                    if interval != entry.interval_s and not entry.busy:
                        entry.due_mono = now if interval > 0 else None
                    entry.interval_s = interval
                    entry.host, entry.host_limit = source.host, host_limit_for(source)
            self._cond.notify_all()

    def add_listener(self, on_end):
        self._on_end.append(on_end)

    # --- asking ------------------------------------------------------------------------
    def request(self, names=None):
        """Ask for a cycle of `names` (all sources when None) that starts after this call;
        never blocks.

        A request is a click: it retries a failing source at once and ends an idle backoff.
        A running cycle may have listed the source before the request, so it does not count:
        the source is queued again when it ends.

        Returns:
          {"started": [...], "joined": [...], "queued_after": [...]} of source names: queued
          now, already queued (not started yet), or queued again once the running cycle ends.
        """
        answer = {"started": [], "joined": [], "queued_after": []}
        with self._cond:
            if self._stopping:
                return answer  # nothing would run it
            for name in [n for n, e in self._entries.items() if not e.retired] \
                    if names is None else names:
                entry = self._entries.get(name)
                if entry is None or entry.retired:
                    raise KeyError(name)
                entry.idle_streak = 0
                if entry.queued_seq is not None:
                    answer["joined"].append(name)
                elif entry.lane is not None:
                    entry.again = True
                    self._state.queue_after(name)
                    answer["queued_after"].append(name)
                else:
                    self._queue(entry)
                    answer["started"].append(name)
            self._cond.notify_all()
        return answer

    def poke(self, name):
        """A probe saw `name` change: sync it now, or once more after its running cycle.

        Unlike a click it keeps a failing source's retry time (a probe sees the files, not
        why the sync failed) and does nothing for a source synced only on request.
        """
        with self._cond:
            entry = self._entries.get(name)
            if entry is None or entry.retired or self._stopping or entry.failures \
                    or entry.interval_s <= 0:
                return
            if entry.lane is not None:
                if not entry.again:
                    entry.again = True
                    self._state.queue_after(name)
            elif entry.queued_seq is None:
                self._queue(entry)
            self._cond.notify_all()

    def set_probed(self, name, probed):
        """A probe started (or stopped) watching `name`: its timed syncs become the slow
        safety interval (or the listing interval again, from now)."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None or entry.probed == probed:
                return
            entry.probed = probed
            if self._timers and not entry.busy and entry.due_mono is not None \
                    and not entry.failures:
                delay = self._next_delay(entry)
                entry.due_mono = self._clock() + delay
                self._state.set_schedule(entry.name, delay, retry=False,
                                         idle_factor=self._idle_factor(entry))
            self._cond.notify_all()

    def wait(self, names=None, timeout_s=None):
        """Block until no cycle of `names` is queued or running; False on timeout."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        with self._cond:
            while True:
                busy = [e for e in self._entries.values()
                        if e.busy and (names is None or e.name in names)]
                if not busy:
                    return True
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def start(self, timers=True):
        """Start dispatching; with `timers`, timed sources sync now and then every interval."""
        with self._cond:
            self._timers = timers
            if timers:
                now = self._clock()
                for entry in self._entries.values():
                    if entry.interval_s > 0 and entry.due_mono is None and not entry.busy:
                        # A probed source syncs when its probe's first walk reports it.
                        entry.due_mono = now + (self._next_delay(entry) if entry.probed else 0)
            if self._thread is None:
                self._thread = threading.Thread(target=self._dispatch_loop, daemon=True,
                                                name="tb-rsync-scheduler")
                self._thread.start()
            self._cond.notify_all()

    def stop(self, wait_s=10.0):
        """No new cycles; queued ones are cancelled; running ones get `wait_s` to end.

        Cancelling rsync itself is the cycle's business (the service's cancel flag).
        """
        with self._cond:
            self._stopping = True
            for entry in self._entries.values():
                if entry.queued_seq is not None:
                    entry.queued_seq = None
                    self._state.abandon(entry.name)
            self._cond.notify_all()
        self.wait(timeout_s=wait_s)

    # --- dispatching -------------------------------------------------------------------
    def _queue(self, entry):
        self._seq += 1
        entry.queued_seq = self._seq
        entry.due_mono = None  # the end of this cycle sets the next one
        self._state.try_queue(entry.name)

    def _dispatch_loop(self):
        while True:
            try:
                with self._cond:
                    self._dispatch()
                return
            except Exception:  # a bug: log it and keep scheduling, or every sync stops
                logger.exception("tb-rsync: the scheduler hit an unexpected error")
                time.sleep(_TICK_S)

    def _dispatch(self):
        """Queue what is due and start what fits, until stopped (holding `_cond`)."""
        while not self._stopping:
            now = self._clock()
            for entry in self._entries.values():
                if entry.due_mono is not None and entry.due_mono <= now and not entry.busy:
                    self._queue(entry)
                if entry.lane == "main" and now - entry.started_mono > SLOW_AFTER_S \
                        and self._running("slow") < self._max_parallel:
                    entry.lane = "slow"  # a long cycle gives its main slot back
            for entry in sorted((e for e in self._entries.values()
                                 if e.queued_seq is not None), key=lambda e: e.queued_seq):
                lane = "slow" if entry.failures else "main"
                if self._running(lane) < self._max_parallel and \
                        (entry.host is None or
                         self._running_on(entry.host) < entry.host_limit):
                    self._launch(entry, lane)
            dues = [e.due_mono for e in self._entries.values() if e.due_mono is not None]
            self._cond.wait(max(0.01, min(dues + [now + _TICK_S]) - now))

    def _running(self, lane):
        return sum(1 for e in self._entries.values() if e.lane == lane)

    def _running_on(self, host):
        return sum(1 for e in self._entries.values() if e.lane and e.host == host)

    def _launch(self, entry, lane):
        entry.queued_seq = None
        entry.lane, entry.started_mono = lane, self._clock()
        try:
            threading.Thread(target=self._run, args=(entry,), daemon=True,
                             name=f"tb-rsync-sync-{entry.name}").start()
        except RuntimeError as e:  # "can't start new thread": count it as a failed cycle
            self._state.abandon(entry.name)
            self._book(entry, e, None)
            self._release(entry)

    def _run(self, entry):
        error, result = None, None
        try:
            result = self._cycle(entry.name)
        except Exception as e:  # recorded by the cycle; the scheduler only counts it
            error = e
        with self._cond:
            end = self._book(entry, error, result)
        # Listeners run before the slot is released, so `wait()` returns only once the
        # cycle has been reported (saved, printed).
        for listener in self._on_end:
            try:
                listener(end)
            except Exception:
                logger.exception("tb-rsync: a sync listener failed")
        with self._cond:
            self._release(entry)

    def _release(self, entry):
        """The cycle's slot is free; a source asked for meanwhile is queued again at once, so
        `wait()` never sees it idle in between (holding `_cond`)."""
        entry.lane = None
        again, entry.again = entry.again, False
        if entry.retired:
            if self._entries.get(entry.name) is entry:
                del self._entries[entry.name]
        elif again and self._stopping:
            self._state.abandon(entry.name)
        elif again:
            self._queue(entry)
        self._cond.notify_all()

    def _book(self, entry, error, result):
        """Count a cycle's end and schedule the next one (holding `_cond`)."""
        previous = entry.failures
        changed = error is None and bool(getattr(result, "changed", True))
        if error is None:
            entry.failures = 0
            entry.idle_streak = 0 if changed else entry.idle_streak + 1
        else:
            entry.failures += 1
        delay = None if entry.retired else self._next_delay(entry)
        entry.due_mono = None if delay is None or not self._timers or self._stopping \
            else self._clock() + delay
        if not entry.retired:
            self._state.set_schedule(
                entry.name, None if entry.due_mono is None else delay,
                retry=entry.failures > 0, idle_factor=self._idle_factor(entry))
        return CycleEnd(entry.name, error, changed, entry.failures, previous,
                        delay if entry.due_mono is not None else None, result,
                        self._stopping, max(0.0, self._clock() - entry.started_mono))

    def _idle_factor(self, entry):
        if entry.probed:
            return 1
        factor = 1
        for threshold in (IDLE_AFTER, 2 * IDLE_AFTER):
            if entry.idle_streak >= threshold and factor < IDLE_MAX_FACTOR:
                factor *= 2
        return factor

    def _next_delay(self, entry):
        if entry.interval_s <= 0:
            return None
        if entry.failures:
            return retry_delay_s(entry.interval_s, entry.failures)
        if entry.probed:
            return safety_interval_s(entry.name, entry.interval_s)
        return entry.interval_s * self._idle_factor(entry)


def safety_interval_s(name, interval_s):
    """When a probed source syncs although its probe saw nothing: `SAFETY_S` (or the
    interval, if longer), early by a fraction of `SAFETY_SPREAD` fixed by the name."""
    spread = zlib.crc32(name.encode("utf-8", "surrogateescape")) / 0xFFFFFFFF
    return max(interval_s, SAFETY_S) * (1.0 - SAFETY_SPREAD * spread)
