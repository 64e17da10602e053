"""What TensorBoard has loaded, asked through its real (legacy) data provider; what the legacy
reloader says when TensorBoard's multiplexer lacks what it needs."""

import argparse

from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin

from tb_rsync_plugin.publishing.report import PublishReport, RunUpdate
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tests.events import append_scalars, event_file_name, text_bytes

WALL0 = 1_700_000_000.0


def provider_for(logdir):
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return tb_data_provider.MultiplexerDataProvider(multiplexer, str(logdir))


def test_every_plugins_data_counts_and_a_narrow_question_mutes_nothing_else(tmp_path):
    (tmp_path / "plain").mkdir()
    append_scalars(str(tmp_path / "plain" / event_file_name()), range(3), wall_time0=WALL0)
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / event_file_name()).write_bytes(
        text_bytes(range(5), tag="pr", plugin_name="my_curves", wall_time0=WALL0))
    loaded = reload_lib.LoadedTimes(provider_for(tmp_path))
    # Asked about "plain" alone (as after a cycle of its source): my_curves has nothing there.
    assert loaded(["plain"]) == {"plain": WALL0 + 2}
    # The monitor then asks about every run: my_curves must still be asked about "curves".
    assert loaded(["plain", "curves"]) == {"plain": WALL0 + 2, "curves": WALL0 + 4}
    assert loaded(["nope"]) == {"nope": None}


class MultiplexerWithoutPerRunReload(plugin_event_multiplexer.EventMultiplexer):
    """TensorBoard's real multiplexer, as a release without `AddRun` would have it."""

    @property
    def AddRun(self):
        raise AttributeError("AddRun")


def test_a_multiplexer_without_per_run_reload_is_a_sentence_not_a_failure(tmp_path):
    multiplexer = MultiplexerWithoutPerRunReload()
    context = base_plugin.TBContext(
        multiplexer=multiplexer, flags=argparse.Namespace(reload_interval=5),
        data_provider=tb_data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path)))
    reloader = reload_lib.make_reloader(context, str(tmp_path / "holding"))
    assert reloader.kind == "legacy"
    assert reloader.note == ("This TensorBoard has no per-run reload (its multiplexer lacks "
                             "AddRun); new data shows at its next reload (every 5 s, "
                             "--reload_interval).")
    assert reloader.period_s == 5 and reloader.not_live[0] == "waiting"
    report = PublishReport(actions=(), needs_restage=(), errors=(), runs={
        "node/a": RunUpdate("node/a", WALL0, 3, files=("a/" + event_file_name(),)),
        "node/b": RunUpdate("node/b", WALL0, 3, rewritten=True)})
    notes = reloader.apply(str(tmp_path), report)
    assert list(notes) == ["node/b"] and "restart TensorBoard" in notes["node/b"]
