"""The plugin's HTTP surface through werkzeug's test Client over a real TensorBoardWSGI."""

import argparse
import concurrent.futures
import json
import os
import time

import pytest
from tensorboard.backend import application
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from tb_rsync_plugin.tensorboard import plugin as plugin_lib
from tests.events import append_scalars, event_file_name
from tests.fixtures_tensorboard import wait_until
from tests.processes import slow_source_config

HEADERS = {"X-TB-Rsync": "1"}


def make_flags(logdir, sources=(), **overrides):
    parser = argparse.ArgumentParser()
    plugin_lib.RsyncPluginLoader().define_flags(parser)
    flags = parser.parse_args([])
    flags.logdir = str(logdir)
    flags.rsync_source = list(sources)
    for key, value in overrides.items():
        setattr(flags, key, value)
    return flags


@pytest.fixture
def app(tmp_path):
    """A TensorBoardWSGI with the plugin; sources: `local` (real folder) and `slow`."""
    source = tmp_path / "remote"
    (source / "run1").mkdir(parents=True)
    append_scalars(str(source / "run1" / event_file_name()), range(5))
    logdir = tmp_path / "logs"
    logdir.mkdir()
    # ~3 s of rsync: long enough for twenty clicks to join it.
    toml = slow_source_config(tmp_path, mib=3, kib_per_s=1024)
    flags = make_flags(logdir, [f"local={source}/"], rsync_config=str(toml),
                       rsync_staging=str(tmp_path / "staging"))
    loader = plugin_lib.RsyncPluginLoader()
    loader.fix_flags(flags)
    context = base_plugin.TBContext(logdir=str(logdir), flags=flags, multiplexer=None,
                                    data_provider=None)
    plugin = loader.load(context)
    wsgi = application.TensorBoardWSGI([plugin])
    yield plugin, wsgi, logdir
    plugin._service.stop()


def client(wsgi):
    return werkzeug_test.Client(wsgi)


def post(wsgi, body, headers=HEADERS, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client(wsgi).post("/data/plugin/rsync/sync", data=data, headers=headers,
                             content_type=content_type)


def test_status_lists_sources_and_clock(app):
    _, wsgi, _ = app
    response = client(wsgi).get("/data/plugin/rsync/status")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    data = response.get_json()
    assert [s["name"] for s in data["sources"]] == ["local", "slow"]
    assert data["loader"] == "fast" and abs(data["server_unix_s"] - time.time()) < 5
    assert data["runs"] == []


def test_sync_publishes_and_reports_runs(app):
    plugin, wsgi, logdir = app
    response = post(wsgi, {"source": "local"})
    assert response.status_code == 202
    assert response.get_json() == {"started": ["local"], "joined": [], "queued_after": []}
    plugin._service.wait(timeout_s=60)
    data = client(wsgi).get("/data/plugin/rsync/status").get_json()
    local = data["sources"][0]
    assert local["state"] == "idle", local
    assert local["last_result"]["files_published"] == 1
    (run,) = data["runs"]
    assert run["run"] == "local/run1" and run["source_step"] == 4
    assert os.path.getsize(logdir / "local" / "run1" / event_file_name()) > 0


@pytest.mark.parametrize("headers,content_type,body,code", [
    ({}, "application/json", {}, 403),                           # no CSRF header
    ({"X-TB-Rsync": "0"}, "application/json", {}, 403),          # wrong header value
    (HEADERS, "text/plain", {}, 400),                            # not JSON content type
    (HEADERS, "application/x-www-form-urlencoded", "source=local", 400),
    (HEADERS, "application/json", b"{not json", 400),
    (HEADERS, "application/json", b"[" * 3000, 400),              # nested past the recursion limit
    (HEADERS, "application/json", [], 400),                      # not an object
    (HEADERS, "application/json", {"source": 3}, 400),
    (HEADERS, "application/json", {"source": "local", "cmd": "rm"}, 400),
    (HEADERS, "application/json", {"source": "../../etc"}, 404),  # only a key, never a path
    (HEADERS, "application/json", {"source": "nope"}, 404),
    (HEADERS, "application/json", b"x" * 10000, 413),
])
def test_sync_refuses_bad_requests(app, headers, content_type, body, code):
    plugin, wsgi, _ = app
    response = post(wsgi, body, headers=headers, content_type=content_type)
    assert response.status_code == code, response.get_data(as_text=True)
    assert "error" in response.get_json()
    assert all(s["state"] == "idle" for s in plugin.status_impl()["sources"])


def test_wrong_methods(app):
    _, wsgi, _ = app
    assert client(wsgi).get("/data/plugin/rsync/sync").status_code == 405
    assert client(wsgi).post("/data/plugin/rsync/status", headers=HEADERS).status_code == 405


@pytest.mark.parametrize("path", [
    "/data/plugin/rsync/../../../etc/passwd",
    "/data/plugin/rsync/%2e%2e/%2e%2e/setup.py",
    "/data/plugin/rsync/__init__.py",
    "/data/plugin/rsync/index.js%00.py",
    "/data/plugin/rsync/frontend/index.js",
    "/data/plugin/rsync//etc/passwd",
])
def test_static_traversal_is_refused(app, path):
    _, wsgi, _ = app
    response = client(wsgi).get(path)
    assert response.status_code == 404
    assert b"root:" not in response.get_data()


def test_static_files_are_served(app):
    _, wsgi, _ = app
    response = client(wsgi).get("/data/plugin/rsync/index.js")
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert b"render" in response.get_data()
    entry = client(wsgi).get("/data/plugin_entry.html?name=rsync")
    assert entry.status_code == 200 and b"index.js" in entry.get_data()


def test_every_frontend_file_is_served(app):
    """The allow-list is the frontend folder: a module split off views.js or index.js
    that the list missed would be a 404 in TensorBoard, and the tab would stay blank."""
    _, wsgi, _ = app
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "frontend")
    shipped = {name for name in os.listdir(folder) if name.endswith((".js", ".css", ".html"))}
    assert set(plugin_lib.STATIC_FILES) == shipped
    for name in sorted(shipped):
        response = client(wsgi).get(f"/data/plugin/rsync/{name}")
        assert response.status_code == 200, name
        with open(os.path.join(folder, name), "rb") as f:
            assert response.get_data() == f.read(), name


def test_twenty_concurrent_clicks_make_one_rsync_or_two(app):
    """Clicks before the sync starts join it; clicks while it runs make one sync after it."""
    plugin, wsgi, logdir = app
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: post(wsgi, {"source": "slow"}), range(20)))
    assert {r.status_code for r in responses} == {202}
    bodies = [r.get_json() for r in responses]
    assert sum(len(b["started"]) for b in bodies) == 1
    assert all(sum(b.values(), []) == ["slow"] for b in bodies), bodies
    plugin._service.wait(timeout_s=60)
    slow = plugin.status_impl()["sources"][1]
    assert slow["state"] == "idle" and slow["error"] is None
    assert slow["last_result"]["files_transferred"] == \
        (0 if any(b["queued_after"] for b in bodies) else 1)


def test_sync_all_starts_every_source(app):
    plugin, wsgi, _ = app
    response = post(wsgi, {})
    assert response.status_code == 202
    assert sorted(response.get_json()["started"]) == ["local", "slow"]
    plugin._service.wait(timeout_s=60)
    assert [s["state"] for s in plugin.status_impl()["sources"]] == ["idle", "idle"]


def test_failed_source_shows_sentence_and_details(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    flags = make_flags(logdir, [f"gone={tmp_path}/no/such/dir/"],
                       rsync_staging=str(tmp_path / "staging"))
    loader = plugin_lib.RsyncPluginLoader()
    loader.fix_flags(flags)
    plugin = loader.load(base_plugin.TBContext(logdir=str(logdir), flags=flags))
    try:
        plugin.sync_impl("gone")
        source = wait_until(lambda: _errored(plugin), 30, message="the sync to fail")
        assert "gone" in source["error"]["message"]
        assert source["error"]["message"].count("\n") == 0
        assert "rsync" in source["error"]["details"]
        assert os.listdir(logdir) == []
    finally:
        plugin._service.stop()


def _errored(plugin):
    source = plugin.status_impl()["sources"][0]
    return source if source["state"] == "error" else None


@pytest.mark.parametrize("overrides,needle", [
    ({"rsync_source": ["no-equals-sign"]}, "NAME=SOURCE"),
    ({"rsync_source": ["a=/x/", "a=/y/"]}, "used twice"),
    ({"rsync_source": ["../up=/x/"]}, "plain folder name"),
    ({"rsync_source": ["a=/x/"], "rsync_interval": "soon"}, "--rsync_interval"),
    ({"rsync_source": ["a=/x/"], "rsync_interval": "-1"}, "--rsync_interval"),
    ({"rsync_config": "/no/such/file.toml"}, "does not exist"),
    ({"rsync_watch": ["a"]}, "Cannot watch 'a': no source has that name"),
    ({"rsync_source": ["a=gpu1:/x/"], "rsync_watch": ["a"]}, "only applies to local folders"),
])
def test_bad_flags_raise_flags_error(tmp_path, overrides, needle):
    flags = make_flags(tmp_path, **overrides)
    with pytest.raises(base_plugin.FlagsError, match="tb-rsync: .*" + needle):
        plugin_lib.RsyncPluginLoader().fix_flags(flags)


def test_staging_inside_logdir_is_refused(tmp_path):
    flags = make_flags(tmp_path, ["a=/x/"], rsync_staging=str(tmp_path / "stage"))
    with pytest.raises(base_plugin.FlagsError, match="outside the logdir"):
        plugin_lib.RsyncPluginLoader().fix_flags(flags)


def test_a_source_overlapping_the_logdir_is_refused(tmp_path):
    flags = make_flags(tmp_path, [f"a={tmp_path}/"])
    with pytest.raises(base_plugin.FlagsError, match="tb-rsync: Source 'a' .* overlaps the "
                                                     "logdir"):
        plugin_lib.RsyncPluginLoader().fix_flags(flags)


def test_no_sources_means_no_plugin(tmp_path):
    loader = plugin_lib.RsyncPluginLoader()
    flags = make_flags(tmp_path)
    loader.fix_flags(flags)
    assert loader.load(base_plugin.TBContext(logdir=str(tmp_path), flags=flags)) is None
