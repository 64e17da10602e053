"""Prometheus metrics of one sync service, for monitoring that never opens the Sync tab.

Gauges are read from the state's `snapshot()` at each scrape (the one place status lives);
counters and the sync-duration histogram count the scheduler's cycle ends (`CycleEnd`) from
the moment `SyncMetrics` is attached, as Prometheus counters do: `rate()` copes with a
restart. Each service has its own registry; nothing goes into prometheus_client's global
one (a process may hold several services, and the library's own process metrics are not
ours to add). Label values are source and run names only, escaped by the library: no
source addresses, hosts or error messages, so the page can be served without a login.
"""

import dataclasses
import threading
from typing import Optional

from prometheus_client import exposition, registry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, \
    HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from tb_rsync_plugin.errors import ConfigError
from tb_rsync_plugin.transports import probes

SOURCE_STATES = ("idle", "queued", "syncing", "error")
PROBE_MODES = (probes.WALK, probes.PROBE, probes.LISTING, probes.INOTIFY)
RUN_STATES = ("live", "waiting", "unknown", "error", "restart_needed")
# Upper bounds (seconds) of the sync-duration buckets: a no-change local sync takes a few
# hundredths, a no-change sync over ssh about a second, a big first sync minutes.
DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclasses.dataclass
class _SourceCounts:
    syncs_ok: int = 0
    syncs_failed: int = 0
    files_published: int = 0
    bytes_published: int = 0
    bytes_received: int = 0
    duration_sum_s: float = 0.0
    # Cycles per bucket (not cumulative); the last one is +Inf.
    duration_counts: list = dataclasses.field(
        default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    # rclone's HTTP requests: None until a cycle counted them; `requests_unknown` once a
    # cycle could not (the user's rclone flags set its logging): then never shown.
    api_requests: Optional[int] = None
    requests_unknown: bool = False

    def add_requests(self, requests):
        if requests is None:
            self.requests_unknown = True
        else:
            self.api_requests = (self.api_requests or 0) + requests


class SyncMetrics:
    """A prometheus_client collector over one `SyncService`, with its own registry.

    Args:
      service: the `SyncService`; its scheduler gets `on_end` as a listener.
    """

    def __init__(self, service):
        self._state = service.state
        self._lock = threading.Lock()
        self._counts = {}  # source name -> _SourceCounts
        self.registry = registry.CollectorRegistry()
        self.registry.register(self)
        service.scheduler.add_listener(self.on_end)

    def on_end(self, end):
        """Count one cycle (a scheduler listener). A cycle cancelled by stopping is not the
        source's failure and is not counted, as the state does not record it."""
        if end.stopping and end.error is not None:
            return
        with self._lock:
            counts = self._counts.setdefault(end.name, _SourceCounts())
            if end.error is None:
                counts.syncs_ok += 1
                result = end.result
                if result is not None:
                    counts.files_published += result.report.files_published
                    counts.bytes_published += result.report.bytes_published
                    counts.bytes_received += result.transfer.bytes_received
                    counts.add_requests(result.transfer.api_requests)
            else:
                counts.syncs_failed += 1
                counts.add_requests(getattr(end.error, "api_requests", 0))
            counts.duration_sum_s += end.duration_s
            bucket = next((i for i, bound in enumerate(DURATION_BUCKETS_S)
                           if end.duration_s <= bound), len(DURATION_BUCKETS_S))
            counts.duration_counts[bucket] += 1

    def exposition(self, accept=None):
        """(body bytes, content type) for an HTTP `Accept` header: the Prometheus text
        format, or OpenMetrics when the scraper asks for it (the library's negotiation)."""
        encoder, content_type = exposition.choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def serve(self, host, port):
        """Serve the metrics on `host:port` (any path; /metrics by convention) from a
        daemon thread.

        Returns:
          (server, url): `server.shutdown()` stops it; `url` has the port, also when
          `port` is 0 (a free one).
        """
        if not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port {port} is not a port; use 1 to 65535 "
                              "(or 0 for any free one).")
        try:
            server, _ = exposition.start_http_server(port, host, self.registry)
        except OSError as e:
            raise ConfigError(f"Cannot serve metrics on {host}:{port} "
                              f"({e.strerror or e}); pick another --metrics-port or "
                              "--metrics-host.") from None
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return server, f"http://{shown}:{bound_port}/metrics"

    # --- the collector -----------------------------------------------------------------
    def collect(self):
        snapshot = self._state.snapshot()
        with self._lock:
            counts = {name: dataclasses.replace(c, duration_counts=list(c.duration_counts))
                      for name, c in self._counts.items()}
        now = snapshot["server_unix_s"]
        sources = snapshot["sources"]
        runs = snapshot["runs"]
        yield from _overall(snapshot, sources, runs)
        yield from _per_source(sources, runs, counts, now)
        run_newest = GaugeMetricFamily(
            "tb_rsync_run_newest_event_timestamp_seconds",
            "Wall time of the newest event published for the run (as written by the "
            "training job).", labels=["source", "run"])
        for run in runs:
            if run["source_wall_time"] is not None:
                run_newest.add_metric([run["source"], run["run"]], run["source_wall_time"])
        yield run_newest


def _overall(snapshot, sources, runs):
    info = GaugeMetricFamily("tb_rsync_info", "tb-rsync's version and TensorBoard loader.",
                             labels=["version", "loader"])
    info.add_metric([snapshot["version"], snapshot["loader"]], 1)
    yield info
    states = [s["state"] for s in sources]
    yield GaugeMetricFamily("tb_rsync_cycles_running", "Sync cycles running now.",
                            value=states.count("syncing"))
    yield GaugeMetricFamily("tb_rsync_cycles_queued",
                            "Sync cycles asked for and waiting for a slot.",
                            value=states.count("queued"))
    yield GaugeMetricFamily(
        "tb_rsync_config_error", "1 while an edit of the config file is refused (the "
        "sources from before it keep syncing).", value=int(bool(snapshot["config_error"])))
    yield GaugeMetricFamily("tb_rsync_tool_error",
                            "1 while rsync (or rclone, for rclone sources) is missing.",
                            value=int(bool(snapshot["rsync_error"])))
    by_state = GaugeMetricFamily("tb_rsync_runs", "Published runs by state.", labels=["state"])
    run_states = [r["state"] for r in runs]
    for state in RUN_STATES:
        by_state.add_metric([state], run_states.count(state))
    yield by_state
    if snapshot["loader"] != "none":
        lags = [r["behind_s"] for r in runs if r["behind_s"] is not None]
        lag = GaugeMetricFamily(
            "tb_rsync_tensorboard_lag_seconds",
            "The most any run's newest event TensorBoard has loaded is behind its newest "
            "published event (wall time); runs TensorBoard has not loaded at all count in "
            "tb_rsync_runs{state=\"waiting\"}.")
        if lags:
            lag.add_metric([], max(lags))
        yield lag


def _per_source(sources, runs, counts, now):
    def gauge(name, documentation, extra=()):
        return GaugeMetricFamily(name, documentation, labels=["source", *extra])

    state = gauge("tb_rsync_source_state", "1 for the source's current state.", ["state"])
    probe = gauge("tb_rsync_source_probe_mode",
                  "1 for how the source's changes are noticed (walk: local folder walked "
                  "here; probe: a session on the node; listing: rsync or rclone lists it "
                  "each interval; inotify: a watched inbox).", ["mode"])
    failures = gauge("tb_rsync_source_consecutive_failures",
                     "Failed syncs in a row (0 after a success).")
    last_ok = gauge("tb_rsync_source_last_success_timestamp_seconds",
                    "When the source's last successful sync ended.")
    last_end = gauge("tb_rsync_source_last_sync_timestamp_seconds",
                     "When the source's last sync ended, successful or not.")
    newest_age = gauge("tb_rsync_source_newest_event_age_seconds",
                       "Age of the newest event published from the source, any run.")
    syncs = CounterMetricFamily("tb_rsync_source_syncs", "Sync cycles that ended.",
                                labels=["source", "result"])
    files = CounterMetricFamily("tb_rsync_source_published_files",
                                "Files published (appended to, created or replaced).",
                                labels=["source"])
    published = CounterMetricFamily("tb_rsync_source_published_bytes",
                                    "Bytes published into the logdir.", labels=["source"])
    received = CounterMetricFamily("tb_rsync_source_received_bytes",
                                   "Bytes rsync or rclone received.", labels=["source"])
    requests = CounterMetricFamily(
        "tb_rsync_source_api_requests", "HTTP requests rclone made to the storage (rclone "
        "sources whose requests are counted: not when rclone_flags set rclone's logging).",
        labels=["source"])
    duration = HistogramMetricFamily("tb_rsync_source_sync_duration_seconds",
                                     "How long sync cycles took.", labels=["source"])
    newest = {}
    for run in runs:
        if run["source_wall_time"] is not None:
            newest[run["source"]] = max(newest.get(run["source"], run["source_wall_time"]),
                                        run["source_wall_time"])
    for s in sources:
        name = s["name"]
        for value in SOURCE_STATES:
            state.add_metric([name, value], int(s["state"] == value))
        for mode in PROBE_MODES:
            probe.add_metric([name, mode], int(s["probe_mode"] == mode))
        failures.add_metric([name], s["failures"])
        if s["last_ok_unix_s"] is not None:
            last_ok.add_metric([name], s["last_ok_unix_s"])
        if s["last_end_unix_s"] is not None:
            last_end.add_metric([name], s["last_end_unix_s"])
        if name in newest:
            # A node's clock ahead of ours would make it negative: no age is below zero.
            newest_age.add_metric([name], max(0.0, now - newest[name]))
        c = counts.get(name, _SourceCounts())
        syncs.add_metric([name, "ok"], c.syncs_ok)
        syncs.add_metric([name, "error"], c.syncs_failed)
        files.add_metric([name], c.files_published)
        published.add_metric([name], c.bytes_published)
        received.add_metric([name], c.bytes_received)
        if s["api_requests"] is not None and c.api_requests is not None and \
                not c.requests_unknown:
            requests.add_metric([name], c.api_requests)
        cumulative, buckets = 0, []
        for bound, n in zip((*map(floatToGoString, DURATION_BUCKETS_S), "+Inf"), c.duration_counts):
            cumulative += n
            buckets.append((bound, cumulative))
        duration.add_metric([name], buckets, c.duration_sum_s)
    yield from (state, probe, failures, last_ok, last_end, newest_age, syncs, files,
                published, received, requests, duration)
