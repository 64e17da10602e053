"""One source's status: its sync state, schedule, last result and what of it is journalled.

`state.SyncState` keeps one `SourceStatus` per source under its lock and calls the methods
below; nothing here locks, journals or reads a clock.
"""

import dataclasses
from typing import Optional

from tb_rsync_plugin import config

# Saved for `tb-rsync status`, not restored: the new process makes its own schedule and
# finds its own sources.
_SCHEDULE_KEYS = ("next_sync_unix_s", "retrying", "failures", "found_by")
# Source fields kept across restarts (the rest describe this process's schedule).
_SAVED_SOURCE_KEYS = ("last_start_unix_s", "last_end_unix_s", "last_ok_unix_s",
                      "last_result", "error", "warnings", "next_sync_unix_s", "retrying",
                      "failures", "appending", "last_change", "found_by",
                      "api_request_minutes")
# Run names kept in a source's `last_change` (the status is polled; a fleet has many).
LAST_CHANGE_RUNS = 5
# rclone's requests are shown for the syncs that ended in the last hour, kept per minute.
REQUESTS_WINDOW_S = 3600
_MINUTE_S = 60


@dataclasses.dataclass
class SourceStatus:
    name: str
    source: str
    interval_s: float
    state: str = "idle"  # idle | queued | syncing | error
    next_sync_unix_s: Optional[float] = None
    retrying: bool = False  # next_sync_unix_s is a retry after a failure
    failures: int = 0  # consecutive failed syncs
    idle_factor: int = 1  # automatic syncs back off to this many intervals while idle
    appending: bool = False  # the last successful sync appended to event files (being written)
    # How changes are noticed (probes.py): "walk", "probe", "listing" or "inotify", and why.
    probe_mode: str = "listing"
    probe_detail: str = ""
    last_start_unix_s: Optional[float] = None
    last_end_unix_s: Optional[float] = None
    last_ok_unix_s: Optional[float] = None
    progress: Optional[dict] = None
    last_result: Optional[dict] = None
    # The newest sync that published something (the last one often published nothing):
    # {unix_s, files_published, bytes_published, runs_updated, runs (the first few)}.
    last_change: Optional[dict] = None
    error: Optional[dict] = None
    warnings: list = dataclasses.field(default_factory=list)
    # The [[discover]] rule that found it (None: configured), and whether its host left the
    # rule's answer (its last sync is pending).
    found_by: Optional[str] = None
    leaving: bool = False
    # rclone sources: [minute (Unix s), syncs, requests, syncs not counted] for the syncs
    # that ended in the last hour (`api_requests` in the status sums them). Journalled,
    # so another process (`tb-rsync status`) and the next start see them.
    api_request_minutes: Optional[list] = None

    def to_json(self, now):
        """The status at `now` as JSON-ready values: what `dataclasses.asdict` gives, without
        its deep copy (the status of a fleet is rebuilt every second or so; asdict took 22 ms
        for 1,000 sources, docs/BENCHMARKS.md B11). Its dicts are only ever replaced, never
        changed in place, so one level of copying keeps a snapshot from changing. The
        per-minute requests are summed into `api_requests`."""
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        out["warnings"] = list(self.warnings)
        for key in ("progress", "last_result", "last_change", "error"):
            if out[key] is not None:
                out[key] = dict(out[key])
        del out["api_request_minutes"]
        out["api_requests"] = requests_last_hour(self.source, self.api_request_minutes, now)
        return out

    def succeeded(self, transfer, report, now):
        """A cycle ended well at `now` (`transfer.TransferResult`, `report.PublishReport`).

        Returns True if its journal line is due (see `meaningful`)."""
        before = self.saved_fields()
        self._count_requests(transfer.api_requests, now)
        self.progress = None
        self.error = None
        self.failures = 0
        self.last_end_unix_s = self.last_ok_unix_s = now
        self.appending = any(a.action in ("append", "wait") and
                             config.is_event_file(a.path) for a in report.actions)
        self.warnings = list(transfer.warnings)
        self.last_result = {
            "bytes_received": transfer.bytes_received,
            "bytes_published": report.bytes_published,
            "files_transferred": transfer.files_transferred,
            "files_published": report.files_published,
            "runs_updated": len(report.runs),
            "duration_s": round(now - (self.last_start_unix_s or now), 3),
        }
        if self.last_result["files_published"] or report.runs:
            self.last_change = {
                "unix_s": now,
                "files_published": self.last_result["files_published"],
                "bytes_published": report.bytes_published,
                "runs_updated": len(report.runs),
                "runs": sorted(report.runs)[:LAST_CHANGE_RUNS],
            }
        return bool(report.runs or report.actions) or \
            _meaningful(before) != _meaningful(self.saved_fields())

    def failed(self, message, details, now, api_requests=0):
        """A cycle failed at `now`, after `api_requests` (None: not counted)."""
        self._count_requests(api_requests, now)
        self.progress = None
        self.failures += 1
        self.last_end_unix_s = now
        self.error = {"message": message, "details": details, "unix_s": now}

    def _count_requests(self, requests, now):
        """Add a sync's requests (None: not counted) to its minute; older minutes go."""
        if not self.source.startswith(config.RCLONE_PREFIX):
            return
        minute = int(now // _MINUTE_S * _MINUTE_S)
        kept = _last_hour(self.api_request_minutes, now)
        if not kept or kept[-1][0] != minute:
            kept.append([minute, 0, 0, 0])
        # A new list: a snapshot or a journal line may hold the old one.
        last = kept[-1] = list(kept[-1])
        last[1] += 1
        if requests is None:
            last[3] += 1
        else:
            last[2] += requests
        self.api_request_minutes = kept

    def saved_fields(self):
        """What the journal keeps of this source (a `{"source": ...}` line)."""
        fields = {key: getattr(self, key) for key in _SAVED_SOURCE_KEYS}
        fields.update(name=self.name, source=self.source, interval_s=self.interval_s,
                      state="error" if self.error else "idle")
        return fields

    def fold(self, saved):
        """Take in a journalled line (`saved_fields`) unless older than the last sync end.

        Returns True if it was taken in."""
        end = saved["last_end_unix_s"]
        if end is None or (self.last_end_unix_s is not None and end < self.last_end_unix_s):
            return False
        syncing = self.state == "syncing"
        for key in _SAVED_SOURCE_KEYS:
            # The schedule is this process's own; a start it is syncing from, too.
            if key not in _SCHEDULE_KEYS and not (syncing and key == "last_start_unix_s"):
                setattr(self, key, saved[key])
        self.warnings = list(saved["warnings"] or [])
        self.appending = bool(saved["appending"])
        if self.state not in ("queued", "syncing"):
            self.state = "error" if self.error else "idle"
        return True


def requests_last_hour(source, minutes, now):
    """The status's `api_requests` of an rclone source: {"last_hour": the requests of the
    syncs that ended in the last hour (to the minute), None when some were not counted,
    "syncs": how many syncs}; None for other sources (`minutes` as journalled)."""
    if not source.startswith(config.RCLONE_PREFIX):
        return None
    recent = _last_hour(minutes, now)
    return {"last_hour": None if any(m[3] for m in recent) else sum(m[2] for m in recent),
            "syncs": sum(m[1] for m in recent)}


def _last_hour(minutes, now):
    """The per-minute request totals (`api_request_minutes`) of the last hour."""
    return [m for m in minutes or () if m[0] > now - REQUESTS_WINDOW_S]


def _meaningful(fields):
    """What makes a source line worth journalling when the sync published nothing: its
    error, warnings and whether it is being appended to (times and the result of an empty
    sync wait for the heartbeat)."""
    error = fields.get("error") or {}
    return (error.get("message"), error.get("details"), fields.get("warnings"),
            fields.get("appending"))


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(SourceStatus))
