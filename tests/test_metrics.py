"""Prometheus metrics: the library's own parsers read them, a real Prometheus scrapes them
from a real TensorBoard and from `tb-rsync watch`, and the README's alert rules fire."""

import os
import re
import socket
import time

from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from tb_rsync_plugin import __version__
from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.engine import metrics as metrics_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tests.events import append_scalars, event_file_name
from tests.fixtures_prometheus import wait_for_series
from tests.fixtures_tensorboard import wait_until
from tests.processes import start_tb_rsync, stop_tb_rsync
from tests.test_cli import tb_rsync

EVENTS = event_file_name()
README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")
# A name the exposition format must escape (a quote) and that is not ASCII.
ODD_NAME = 'nœud "7"'


def samples(families):
    """{(sample name, frozenset of labels): value} of parsed metric families."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in families for s in family.samples}


def value(parsed, name, **labels):
    return parsed[(name, frozenset(labels.items()))]


def make_remote(folder, wall_time0=1_700_000_000.0):
    events = folder / "remote" / "a" / EVENTS
    events.parent.mkdir(parents=True)
    append_scalars(str(events), range(4), wall_time0=wall_time0)
    return events


def test_metrics_parse_with_the_librarys_own_parsers(tmp_path):
    events = make_remote(tmp_path)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    config = config_lib.build_config(
        str(logdir), [f"{ODD_NAME}={events.parent.parent}/", f"bad={tmp_path / 'missing'}/"],
        None, str(tmp_path / "staging"), 0.0)
    state = state_lib.SyncState(config.sources, config.interval_for)
    service = service_lib.SyncService(config, state, reload_lib.NoReloader())
    metrics = metrics_lib.SyncMetrics(service)
    service.start(timers=False)
    try:
        service.request()
        assert service.wait(timeout_s=60)
        text, content_type = metrics.exposition()
        open_text, open_type = metrics.exposition("application/openmetrics-text")
    finally:
        service.stop()
    assert content_type.startswith("text/plain") and "openmetrics" in open_type
    text = text.decode()
    assert str(tmp_path) not in text  # names only: no source addresses
    families = list(text_string_to_metric_families(text))
    kinds = {f.name: f.type for f in families}
    assert kinds["tb_rsync_source_published_files"] == "counter"
    assert kinds["tb_rsync_source_sync_duration_seconds"] == "histogram"
    parsed = samples(families)
    for name, current in ((ODD_NAME, "idle"), ("bad", "error")):
        assert {state: value(parsed, "tb_rsync_source_state", source=name, state=state)
                for state in metrics_lib.SOURCE_STATES} == \
            {state: float(state == current) for state in metrics_lib.SOURCE_STATES}
        assert value(parsed, "tb_rsync_source_sync_duration_seconds_count", source=name) == 1
        assert value(parsed, "tb_rsync_source_sync_duration_seconds_bucket", source=name,
                     le="+Inf") == 1
        # Synced on request only: rsync lists it (no probe watches it).
        assert value(parsed, "tb_rsync_source_probe_mode", source=name, mode="listing") == 1
    assert value(parsed, "tb_rsync_source_consecutive_failures", source="bad") == 1
    assert value(parsed, "tb_rsync_source_consecutive_failures", source=ODD_NAME) == 0
    assert value(parsed, "tb_rsync_source_syncs_total", source="bad", result="error") == 1
    assert value(parsed, "tb_rsync_source_published_files_total", source=ODD_NAME) == 1
    assert value(parsed, "tb_rsync_source_published_bytes_total", source=ODD_NAME) == \
        events.stat().st_size
    assert value(parsed, "tb_rsync_run_newest_event_timestamp_seconds", source=ODD_NAME,
                 run=f"{ODD_NAME}/a") == 1_700_000_003.0
    assert ("tb_rsync_source_last_success_timestamp_seconds",
            frozenset({("source", "bad")})) not in parsed  # never succeeded: no sample
    assert value(parsed, "tb_rsync_cycles_running") == 0
    assert value(parsed, "tb_rsync_config_error") == 0
    assert samples(openmetrics_parser.text_string_to_metric_families(open_text.decode())) \
        .keys() >= {key for key in parsed if not key[0].endswith("_created")}


def readme_block(marker):
    text = open(README, encoding="utf-8").read()
    block = re.search(f"<!-- {marker} -->\n```[a-z]*\n(.*?)```\n<!-- /{marker} -->", text,
                      re.S)
    assert block, f"README.md has no {marker} block"
    return block.group(1)


def test_prometheus_scrapes_tensorboard_and_watch_and_the_readme_alerts_fire(
        tmp_path, tensorboard_server, prometheus):
    started = time.time()
    rules = tmp_path / "rules.yml"
    rules.write_text(readme_block("alert-rules"))
    prometheus.load_rules(rules)
    # Events 1000 s old: the run is stale (> 15 min) while its source syncs fine.
    old = started - 1000
    tb_events = make_remote(tmp_path / "tb", wall_time0=old)
    watch_events = make_remote(tmp_path / "watch", wall_time0=old)
    for side in ("tb", "watch"):
        (tmp_path / side / "logs").mkdir()
    tb = tensorboard_server(tmp_path / "tb" / "logs",
                            "--rsync_source", f"good={tb_events.parent.parent}/",
                            "--rsync_source", f"bad={tmp_path / 'missing'}/",
                            "--rsync_interval", "1", "--rsync_staging", tmp_path / "tb" / "st")
    watch = start_tb_rsync("watch", "--logdir", tmp_path / "watch" / "logs", "--staging",
                           tmp_path / "watch" / "st", "--interval", "1",
                           "--source", f"good={watch_events.parent.parent}/",
                           "--source", f"bad={tmp_path / 'missing'}/", "--metrics-port", "0")
    try:
        lines = [watch.stdout.readline(), watch.stdout.readline()]
        url = re.search(r"metrics at (http://\S+)", "".join(lines))
        assert url, lines
        prometheus.scrape("tensorboard", tb.url + "/data/plugin/rsync/metrics")
        prometheus.scrape("watch", url.group(1))
        jobs = {"tensorboard", "watch"}

        def both(expr, check):
            found = {labels["job"]: v for labels, v in prometheus.query(expr)}
            return found.keys() == jobs and all(map(check, found.values())) and found

        failures = wait_until(lambda: both('tb_rsync_source_consecutive_failures'
                                           '{source="bad"}', lambda v: v >= 1), 60,
                              message="the failing source's failure count")
        assert set(failures) == jobs
        wait_until(lambda: both('tb_rsync_source_last_success_timestamp_seconds'
                                '{source="good"}', lambda v: v >= started), 60,
                   message="the healthy source's last success")
        # The run's newest event moves (still 15+ min old): the stale-run alert watches runs
        # that were written to lately, so a finished run does not alert forever.
        for events in (tb_events, watch_events):
            append_scalars(str(events), range(4, 6), wall_time0=old)
        wait_until(lambda: both('tb_rsync_run_newest_event_timestamp_seconds'
                                '{run="good/a"}', lambda v: v == old + 5), 60,
                   message="the appended events in Prometheus")
        stale = wait_for_series(prometheus, 'ALERTS{alertname="TbRsyncRunStale"}')
        failing = wait_for_series(prometheus, 'ALERTS{alertname="TbRsyncSourceFailing"}')
        wait_until(lambda: {labels["job"] for labels, _ in prometheus.query(
            'ALERTS{alertname="TbRsyncRunStale"}')} == jobs, 60, message="both stale alerts")
        assert {labels["run"] for labels, _ in stale} == {"good/a"}
        assert {labels["source"] for labels, _ in failing} == {"bad"}
        # The route itself: plain text the library parses; read-only.
        _, body = tb.get("/data/plugin/rsync/metrics")
        families = list(text_string_to_metric_families(body.decode()))
        assert value(samples(families), "tb_rsync_info", version=__version__,
                     loader="fast") == 1
        assert "tb_rsync_tensorboard_lag_seconds" in {f.name for f in families}
        code, _ = tb.post_json("/data/plugin/rsync/metrics", {})
        assert code == 405
    finally:
        prometheus.forget("tensorboard")
        prometheus.forget("watch")
        prometheus.load_rules(None)
        out, err = stop_tb_rsync(watch)
    assert "Traceback" not in err, err


def test_watch_refuses_a_bad_metrics_port_with_a_sentence(tmp_path):
    remote, logdir = tmp_path / "remote", tmp_path / "logs"
    remote.mkdir()
    logdir.mkdir()
    common = ("watch", "--logdir", logdir, "--staging", tmp_path / "st", "--source",
              f"n={remote}/", "--metrics-port")
    result = tb_rsync(*common, "70000")
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: --metrics-port 70000 is not a port; use 1 to "
                                     "65535 (or 0 for any free one).")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tb_rsync(*common, port)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: Cannot serve metrics on 127.0.0.1:{port} "
                                    "(Address already in use)"), result.stderr

