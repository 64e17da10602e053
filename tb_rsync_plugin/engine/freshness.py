"""One run's freshness: what was published, what TensorBoard shows, and the state the Sync
tab gives it ("live", "waiting", "error", "restart_needed").

`state.SyncState` keeps one `RunFreshness` per run under its lock and calls the methods
below; nothing here locks, journals or reads a clock.
"""

import collections
import dataclasses
from typing import Optional

# Publishes remembered per run, to tell which one TensorBoard should show by now.
_HISTORY = 64


@dataclasses.dataclass
class RunFreshness:
    run: str
    source: str
    source_wall_time: Optional[float] = None
    source_step: Optional[int] = None
    published_unix_s: Optional[float] = None
    loaded_wall_time: Optional[float] = None
    rewritten_unix_s: Optional[float] = None
    restart_reason: Optional[str] = None
    # The newest rewrite of one of its files: {unix_s, file, kept_at, by}.
    rewrite: Optional[dict] = None
    # Journal generation of the newest rewrite another process published, and of the newest
    # one this process made TensorBoard read again: "live" only when they match.
    rewrite_gen: int = -1
    applied_gen: int = -1
    # (published_unix_s, newest wall time, newest step) of recent publishes, oldest first.
    history: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=_HISTORY))
    # Event files of this run that could not be published: {staged path: sentence}. An
    # entry stays until that file publishes cleanly, whatever the run's other files do.
    file_errors: dict = dataclasses.field(default_factory=dict)

    def published(self, update, now, reload_note):
        """This process published `update` (`report.RunUpdate`) at `now`."""
        if update.newest_wall_time is not None:
            self.source_wall_time = max(self.source_wall_time or 0.0, update.newest_wall_time)
        if update.newest_step is not None:
            self.source_step = max(self.source_step or 0, update.newest_step)
            if update.rewritten:
                self.source_step = update.newest_step
        self.published_unix_s = now
        if update.rewritten:
            self.rewritten_unix_s = now
            self.source_wall_time = update.newest_wall_time
            # What TensorBoard served before is no proof it serves the new content.
            self.loaded_wall_time = None
            self.history.clear()
        self.history.append((now, self.source_wall_time, self.source_step))
        self.restart_reason = reload_note

    def rewritten_elsewhere(self, entry):
        """Another process published the rewrite `entry` (`rewrites.Rewrite`)."""
        self.rewrite = {"unix_s": entry.unix_s, "file": entry.file,
                        "kept_at": entry.kept_at, "by": "another process"}
        self.rewritten_unix_s = self.published_unix_s = entry.unix_s
        self.rewrite_gen = max(self.rewrite_gen, entry.gen)
        self.source_wall_time, self.source_step = entry.newest_wall_time, entry.newest_step
        self.loaded_wall_time = None
        self.history.clear()
        self.history.append((entry.unix_s, entry.newest_wall_time, entry.newest_step))
        self.restart_reason = None

    def fold(self, saved):
        """Take in a journalled line (`to_json`'s keys) not older than what is known."""
        published = saved["published_unix_s"]
        rewritten = saved["rewritten_unix_s"]
        if rewritten is not None and rewritten != self.rewritten_unix_s:
            # New content: what TensorBoard served before is no proof it serves this.
            self.loaded_wall_time = None
            self.history.clear()
        self.source_wall_time, self.source_step = \
            saved["source_wall_time"], saved["source_step"]
        self.published_unix_s, self.rewritten_unix_s = published, rewritten
        rewrite, known = saved["rewrite"], self.rewrite or {}
        if rewrite is not None and \
                (known.get("file"), known.get("unix_s")) != (rewrite["file"], rewrite["unix_s"]):
            self.rewrite = dict(rewrite, by="another process")
        self.file_errors = dict(saved["file_errors"] or {})
        point = (published, self.source_wall_time, self.source_step)
        if published is not None and (not self.history or self.history[-1] != point):
            self.history.append(point)

    def to_json(self, loader, not_live, settled_before):
        """The run as in the status JSON; the arguments are `state`'s."""
        state, detail, behind_s = self.state(loader, not_live, settled_before)
        return {
            "run": self.run,
            "source": self.source,
            "source_wall_time": self.source_wall_time,
            "source_step": self.source_step,
            "published_unix_s": self.published_unix_s,
            "loaded_wall_time": self.loaded_wall_time,
            "state": state,
            "state_detail": detail,
            "behind_s": behind_s,
            "rewritten_unix_s": self.rewritten_unix_s,
            "rewrite": self.rewrite,
            "file_errors": dict(self.file_errors),
        }

    def state(self, loader, not_live, settled_before):
        """(state, detail, seconds TensorBoard is behind the newest published event or None).

        `loader` and `not_live` are the reloader's kind and its (state, detail) of a run it
        does not show yet; `settled_before`: publishes before this Unix time should show.

        "live" while TensorBoard shows every event published before `settled_before`: under
        steady writing it is always a reload or so behind, and that is still live (with "N s
        behind" beside it), not a badge flipping at every sync. A rewrite another process
        published is never live before this process made TensorBoard read the run again:
        the old content's newest wall time may equal the new one's.
        """
        if self.file_errors:
            return "error", self.file_errors[min(self.file_errors)], None
        if self.restart_reason:
            return "restart_needed", self.restart_reason, None
        if loader == "none":
            return not_live + (None,)
        if self.rewrite_gen > self.applied_gen:
            return ("waiting", "Another process rewrote an event file of this run; "
                               "TensorBoard is reading it again.", None)
        if self.source_wall_time is None:
            return "waiting", "Published; no events with a time yet.", None
        loaded = self.loaded_wall_time
        if loaded is None:
            return not_live + (None,)
        behind_s = max(0.0, self.source_wall_time - loaded)
        if behind_s <= 1e-3:
            return "live", "TensorBoard shows the newest published event.", 0.0
        due = [wall for unix_s, wall, _ in self.history
               if unix_s <= settled_before and wall is not None]
        if not due or loaded >= max(due) - 1e-3:
            return ("live", f"TensorBoard is {behind_s:.0f} s behind the newest published "
                            "event; it shows it at its next reload.", behind_s)
        return not_live + (behind_s,)
