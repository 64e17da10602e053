"""The TensorBoard side: flags, the `rsync` plugin and its HTTP routes.

Routes only read state or ask the service; they never run rsync and never block on it.
Request values are only ever keys into the configured sources: nothing from a request
reaches a command line or a filesystem path (static files are served from a fixed list).
"""

import importlib.resources
import json
import logging
import mimetypes
import os
import threading

from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import config_file as config_file_lib
from tb_rsync_plugin.engine import discovery as discovery_lib
from tb_rsync_plugin.engine import inbox
from tb_rsync_plugin.engine import metrics as metrics_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.errors import ConfigError

logger = logging.getLogger(__name__)

PLUGIN_NAME = "rsync"
CONFIG_POLL_S = 2.0  # how often --rsync_config is checked for edits
CSRF_HEADER = "X-TB-Rsync"
MAX_BODY_BYTES = 4096
# Every file of frontend/ the Sync tab loads (tests/test_plugin_wsgi.py checks the list
# against the folder): anything else is a 404.
STATIC_FILES = ("index.js", "model.js", "refresh.js", "focus.js", "theme.js", "views.js",
                "format.js", "dom.js", "header.js", "sources.js", "runs.js", "style.css")


class RsyncPluginLoader(base_plugin.TBLoader):
    """Adds the `rsync` flag group and builds the plugin when sources are configured."""

    def define_flags(self, parser):
        group = parser.add_argument_group("rsync")
        group.add_argument(
            "--rsync_source", action="append", default=[], metavar="NAME=SOURCE",
            help="Sync rsync SOURCE (/dir/, host:dir/, user@host:/dir/, rsync://host/mod/dir/) "
                 "or object storage through rclone (rclone:REMOTE:PATH) into LOGDIR/NAME. "
                 "Repeatable.")
        group.add_argument(
            "--rsync_config", default="", metavar="FILE",
            help="TOML file with [[source]] tables (name, source, ssh, rsh, bwlimit, include, "
                 "exclude, interval, timeout, watch, max_per_host, ssh_sharing, rclone_config, "
                 "rclone_flags) and [[discover]] rules (slurm or hosts_command, name, source, "
                 "every, command_timeout, and any [[source]] key).")
        group.add_argument(
            "--rsync_watch", action="append", default=[], metavar="NAME",
            help="Sync local source NAME (an inbox nodes push into) as soon as it changes; "
                 "its interval stays as a fallback. Repeatable.")
        group.add_argument(
            "--rsync_interval", default="0", metavar="SECONDS",
            help="Sync every SECONDS; 0 (default) syncs only when asked from the Sync tab.")
        group.add_argument(
            "--rsync_staging", default="", metavar="DIR",
            help="Where rsync stages files before publishing (must be outside the logdir). "
                 "Default: a per-logdir folder under ~/.cache/tb-rsync.")
        group.add_argument(
            "--rsync_max_parallel", default=str(config_lib.DEFAULT_MAX_PARALLEL), metavar="N",
            help="At most N sources sync at once (default %(default)s); sources that keep "
                 "failing or run long retry beside them, never in their way.")
        group.add_argument(
            "--rsync_max_per_host", default=str(config_lib.DEFAULT_MAX_PER_HOST), metavar="N",
            help="At most N sources sync at once from one host (default %(default)s), which "
                 "keeps sshd's MaxStartups and MaxSessions (10) from refusing connections.")
        group.add_argument(
            "--rsync_ssh_sharing", default="true", choices=["true", "false"],
            help="Share one ssh login per host between syncs (OpenSSH ControlMaster); "
                 "false: every rsync logs in on its own.")
        group.add_argument(
            "--rsync_quarantine_days", default=f"{config_lib.DEFAULT_QUARANTINE_DAYS:g}",
            metavar="DAYS", help="Remove quarantined old versions of rewritten event files "
                                 "older than DAYS, except each file's newest (default "
                                 "%(default)s).")
        group.add_argument(
            "--rsync_quarantine_max_gib", default=f"{config_lib.DEFAULT_QUARANTINE_MAX_GIB:g}",
            metavar="GIB", help="Keep the quarantine under GIB, oldest versions removed first "
                                "(default %(default)s).")

    def fix_flags(self, flags):
        try:
            self._config = _config_from_flags(flags)
        except ConfigError as e:
            raise base_plugin.FlagsError(f"tb-rsync: {e}") from None

    def load(self, context):
        config = getattr(self, "_config", None) or _config_from_flags(context.flags)
        if not config.sources and not config.discover:
            return None  # no sources: nothing to show, no tab
        return RsyncPlugin(context, config)


def _config_from_flags(flags):
    sources = list(getattr(flags, "rsync_source", None) or [])
    config_file = getattr(flags, "rsync_config", "") or None
    interval = config_lib.parse_interval(getattr(flags, "rsync_interval", "0") or "0")
    watch = getattr(flags, "rsync_watch", None) or ()
    if not sources and not config_file and not watch:
        return config_lib.SyncConfig(logdir="", staging_root="", sources=())
    logdir = getattr(flags, "logdir", "") or ""
    if not logdir:
        raise ConfigError("--rsync_source needs --logdir (a single local folder to publish "
                          "into); --logdir_spec is not supported.")
    limits = {key: config_lib.parse_limit(getattr(flags, "rsync_" + key, default) or default,
                                          "--rsync_" + key)
              for key, default in (("max_parallel", config_lib.DEFAULT_MAX_PARALLEL),
                                   ("max_per_host", config_lib.DEFAULT_MAX_PER_HOST))}
    sharing = getattr(flags, "rsync_ssh_sharing", "true") != "false"
    disk = config_file_lib.parse_disk_limits(
        getattr(flags, "rsync_quarantine_days", config_lib.DEFAULT_QUARANTINE_DAYS),
        getattr(flags, "rsync_quarantine_max_gib", config_lib.DEFAULT_QUARANTINE_MAX_GIB),
        tensorboard=True)
    return config_lib.build_config(logdir, sources, config_file,
                                   getattr(flags, "rsync_staging", "") or None, interval,
                                   watch, ssh_sharing=sharing, disk=disk, **limits)


class RsyncPlugin(base_plugin.TBPlugin):
    """The Sync tab. Construction is cheap: threads start, rsync does not run."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context, config):
        self._config = config
        reloader = reload_lib.make_reloader(context, config.holding_dir)
        # A publish may take one TensorBoard reload (plus the data server's load time, about
        # as long again) and one loaded-data check to show: that long, a run stays "live".
        state = state_lib.SyncState(
            config.sources, config.interval_for, reload_period_s=reloader.period_s,
            grace_s=2 * reloader.period_s + service_lib.LOADED_REFRESH_S)
        self._service = service_lib.SyncService(config, state, reloader)
        self._service.scheduler.add_listener(service_lib.log_transition)
        self._metrics = metrics_lib.SyncMetrics(self._service)
        self._service.start()
        self._watcher = inbox.start_watching(config, self._service.request)
        # Sources found by [[discover]] rules arrive the way a config edit's do.
        self._discovery = discovery_lib.Discovery(config, self._service, self._apply_config)
        self._discovery.start()
        if getattr(context.flags, "rsync_config", ""):
            threading.Thread(target=self._follow_config_file, args=(context.flags,),
                             name="tb-rsync-config", daemon=True).start()

    def _follow_config_file(self, flags):
        """Re-read --rsync_config when it changes: sources come and go without a restart.

        A bad edit keeps the running configuration; the tab and TensorBoard's log say why.
        """
        path = os.path.expanduser(flags.rsync_config)
        seen = _file_signature(path)
        while not self._service.stopped.wait(CONFIG_POLL_S):
            signature = _file_signature(path)
            if signature == seen:
                continue
            seen = signature
            try:
                self._apply_config_edit(flags, path)
            except Exception as e:  # an OSError of a new source's folders, inotify limits...
                logger.exception("tb-rsync: following the edit of %s failed", path)
                self._service.state.set_config_error(
                    f"Following the edit of '{path}' failed ({type(e).__name__}: {e}); see "
                    "TensorBoard's log.")

    def _apply_config_edit(self, flags, path):
        try:
            config = _config_from_flags(flags)
        except ConfigError as e:
            logger.warning("tb-rsync: %s Keeping the running configuration.", e)
            self._service.state.set_config_error(f"{e} The sources in use are those "
                                                 "from before that edit.")
            return
        self._discovery.set_base(config)  # applies it, with what the rules found
        self._service.state.set_config_error(None)
        logger.warning("tb-rsync: re-read %s: %d source(s).", path, len(config.sources))

    def _apply_config(self, config):
        """A new source list (an edit, or what discovery found): the service and the inbox
        watcher follow."""
        watched_before = {s for s in self._config.sources if s.watch}
        self._config = config
        self._service.reconfigure(config)
        if {s for s in config.sources if s.watch} != watched_before:
            if self._watcher is not None:
                self._watcher.stop()
            self._watcher = inbox.start_watching(config, self._service.request)

    def get_plugin_apps(self):
        apps = {"/status": self._status_route, "/sync": self._sync_route,
                "/metrics": self._metrics_route}
        for name in STATIC_FILES:
            apps["/" + name] = self._static_route
        return apps

    def is_active(self):
        return bool(self._config.sources or self._config.discover)

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Sync",
                                            disable_reload=True)

    # --- routes ------------------------------------------------------------------------
    @wrappers.Request.application
    def _status_route(self, request):
        if request.method != "GET":
            return _json({"error": "Use GET."}, 405)
        return _json_bytes(self.status_bytes_impl())

    @wrappers.Request.application
    def _metrics_route(self, request):
        # Read-only and names only (no addresses, no errors): no CSRF header needed.
        if request.method != "GET":
            return _json({"error": "Use GET."}, 405)
        body, content_type = self.metrics_impl(request.headers.get("Accept"))
        response = wrappers.Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @wrappers.Request.application
    def _sync_route(self, request):
        if request.method != "POST":
            return _json({"error": "Use POST."}, 405)
        if request.headers.get(CSRF_HEADER) != "1":
            return _json({"error": f"Missing header {CSRF_HEADER}: 1."}, 403)
        if request.mimetype != "application/json":
            return _json({"error": "Send a JSON body (Content-Type: application/json)."}, 400)
        # Read at most the limit + 1 byte: a chunked body has no Content-Length to check.
        data = request.stream.read(MAX_BODY_BYTES + 1)
        if len(data) > MAX_BODY_BYTES or (request.content_length or 0) > MAX_BODY_BYTES:
            return _json({"error": f"Request body too large (limit {MAX_BODY_BYTES} bytes)."},
                         413)
        try:
            body = json.loads(data or b"{}")
        except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
            return _json({"error": "The body is not valid JSON."}, 400)
        if not isinstance(body, dict) or set(body) - {"source"}:
            return _json({"error": 'Send {"source": NAME} or {}.'}, 400)
        name = body.get("source")
        if name is not None and not isinstance(name, str):
            return _json({"error": "'source' must be a string."}, 400)
        try:
            result = self.sync_impl(name)
        except KeyError:
            configured = ", ".join(s.name for s in self._config.sources)
            return _json({"error": f"No source named {json.dumps(name)} is configured "
                                   f"(configured: {configured})."}, 404)
        return _json(result, 202)

    @wrappers.Request.application
    def _static_route(self, request):
        name = request.path.rsplit("/", 1)[-1]
        if name not in STATIC_FILES:  # exact match against the shipped list
            return _json({"error": "Not found."}, 404)
        try:
            data = importlib.resources.files("tb_rsync_plugin.frontend").joinpath(name) \
                .read_bytes()
        except (FileNotFoundError, OSError):
            return _json({"error": "Not found."}, 404)
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".js"):
            mimetype = "text/javascript"
        response = wrappers.Response(data, content_type=mimetype + "; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # --- logic, testable without HTTP --------------------------------------------------
    def status_impl(self):
        """The status as a dict (what the route serves, parsed)."""
        return json.loads(self.status_bytes_impl())

    def status_bytes_impl(self):
        """The status JSON, after noticing rewrites other processes published (one stat
        when there are none): a status never says "live" for a rewrite it has not seen."""
        self._service.journal.notice(self._service.state)
        return self._service.state.status_json()

    def metrics_impl(self, accept=None):
        """(body, content type) of the Prometheus metrics, after noticing rewrites other
        processes published, as the status does."""
        self._service.journal.notice(self._service.state)
        return self._metrics.exposition(accept)

    def sync_impl(self, name=None):
        """Ask for syncs (`service.request`); raises KeyError for a name that is not
        configured."""
        if name is None:
            return self._service.request()
        self._config.source(name)  # KeyError if unknown: a key, never a path
        return self._service.request([name])


def _json(data, code=200):
    return _json_bytes(json.dumps(data), code)


def _json_bytes(body, code=200):
    response = wrappers.Response(body, status=code, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _file_signature(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
