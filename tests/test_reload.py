"""What TensorBoard has loaded, asked through its real (legacy) data provider."""

from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer

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
