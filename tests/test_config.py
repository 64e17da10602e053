"""Configuration: NAME=SOURCE pairs, TOML files and their one-sentence errors."""

import os

import pytest

from tb_rsync_plugin import config
from tb_rsync_plugin.errors import ConfigError


def write_toml(tmp_path, text):
    (tmp_path / "logs").mkdir(exist_ok=True)
    path = tmp_path / "sources.toml"
    path.write_text(text)
    return str(path)


def test_full_toml_source(tmp_path):
    path = write_toml(tmp_path, '''
[[source]]
name = "gpu 1"
source = "me@gpu1:/scratch/logs/"
ssh = "ssh -p 2222 -i ~/.ssh/id_cluster -J login"
bwlimit = 5000
include = ["*tfevents*", "plugins/***"]
exclude = ["*.ckpt"]
interval = 15
timeout = 120.5
compress = true

[[source]]
name = "local"
source = "/data/runs"
''')
    cfg = config.build_config(str(tmp_path / "logs"), ["extra=rsync://host/mod/dir/"], path,
                              str(tmp_path / "staging"), 30)
    extra, gpu, local = cfg.sources
    assert (extra.name, extra.is_daemon) == ("extra", True)
    assert gpu == config.Source(
        name="gpu 1", source="me@gpu1:/scratch/logs/",
        ssh="ssh -p 2222 -i ~/.ssh/id_cluster -J login", bwlimit_kib=5000,
        include=("*tfevents*", "plugins/***"), exclude=("*.ckpt",), interval_s=15,
        timeout_s=120.5, compress=True)
    assert not local.compress and not extra.compress
    assert gpu.is_remote_shell and not gpu.is_local
    assert local.is_local and local.source_dir == "/data/runs/"
    assert cfg.interval_for(gpu) == 15 and cfg.interval_for(local) == 30
    assert isinstance(gpu.interval_s, float)  # the status JSON documents floats
    assert cfg.staging_dir("gpu 1") == str(tmp_path / "staging" / "staging" / "gpu 1")


@pytest.mark.parametrize("text,needle", [
    ('[[source]]\nname = "a"\nsource = "/x"\ncolour = "red"\n', "unknown key(s) ['colour'];"),
    ('[[source]]\nname = "a"\nsource = "/x"\nbw_limit = 1\ncolour = "red"\n',
     "unknown key(s) ['bw_limit', 'colour'] (did you mean 'bwlimit' instead of 'bw_limit'?); "
     "allowed keys are"),
    ('[[source]]\nname = "a"\n', "'source' must be a non-empty string"),
    ('[[source]]\nname = ""\nsource = "/x"\n', "'name' must be a non-empty string"),
    ('[[source]]\nname = "a/b"\nsource = "/x"\n', "not a plain folder name"),
    ('[[source]]\nname = ".."\nsource = "/x"\n', "not a plain folder name"),
    ('[[source]]\nname = ".hidden"\nsource = "/x"\n', "not a plain folder name"),
    ('[[source]]\nname = "a"\nsource = "/x"\nbwlimit = "fast"\n', "'bwlimit' must be a whole number"),
    ('[[source]]\nname = "a"\nsource = "/x"\nbwlimit = 1.5\n', "'bwlimit' must be a whole number"),
    ('[[source]]\nname = "a"\nsource = "/x"\ninterval = -1\n', "'interval' must be a number"),
    ('[[source]]\nname = "a"\nsource = "/x"\ninterval = true\n', "'interval' must be a number"),
    ('[[source]]\nname = "a"\nsource = "/x"\ntimeout = 0\n', "'timeout' must be more than 0"),
    ('[[source]]\nname = "a"\nsource = "/x"\ninterval = inf\n', "'interval' must be a number"),
    ('[[source]]\nname = "a"\nsource = "/x"\ntimeout = nan\n', "'timeout' must be a number"),
    ('[[source]]\nname = "a"\nsource = "/x"\ninclude = "*.txt"\n', "'include' must be a list"),
    ('[[source]]\nname = "a"\nsource = "/x"\nssh = ""\n', "'ssh' must be a command"),
    ('[[source]]\nname = "a"\nsource = "/x"\nssh = "ssh \'unclosed"\n', "'ssh' cannot be parsed"),
    ('[[source]]\nname = "a"\nsource = "/x"\nssh = "ssh -p 2222"\n',
     "'ssh' only applies to host:dir sources, and '/x' is a local folder"),
    ('[[source]]\nname = "a"\nsource = "rsync://h/m/"\nssh = "ssh -p 2222"\n',
     "'rsync://h/m/' is an rsync daemon"),
    ('[[source]]\nname = "a"\nsource = "h:/x"\nssh_sharing = "no"\n',
     "'ssh_sharing' must be true or false (no quotes), not 'no'"),
    ('[[source]]\nname = "a"\nsource = "h:/x"\nssh_sharing = 0\n',
     "'ssh_sharing' must be true or false"),
    ('[[source]]\nname = "a"\nsource = "/x"\n[[source]]\nname = "a"\nsource = "/y"\n',
     "used twice"),
    ('[[source]]\nname = "a"\nsource = "pod:/x"\nrsh = ""\n', "'rsh' must be a command"),
    ('[[source]]\nname = "a"\nsource = "pod:/x"\nrsh = "kubectl \'exec"\n',
     "'rsh' cannot be parsed"),
    ('[[source]]\nname = "a"\nsource = "pod:/x"\nrsh = "docker exec -i"\nssh = "ssh"\n',
     "'rsh' and 'ssh' cannot be used together"),
    ('[[source]]\nname = "a"\nsource = "/x"\nrsh = "docker exec -i"\n',
     "'rsh' only applies to HOST:DIR sources (HOST being the pod or container), and '/x' is "
     "a local folder"),
    ('[[source]]\nname = "a"\nsource = "h::m/x"\nrsh = "docker exec -i"\n',
     "'h::m/x' is an rsync daemon"),
    ('[[source]]\nname = "a"\nsource = "me@pod:/x"\nrsh = "docker exec -i"\n',
     "write the source as POD:DIR without 'USER@'"),
    ('[[source]]\nname = "a"\nsource = "/x"\nwatch = "yes"\n',
     "'watch' must be true or false"),
    ('[[source]]\nname = "a"\nsource = "gpu1:/x"\nwatch = true\n',
     "'watch' only applies to local folders (an inbox that nodes push into), and source 'a' "
     "('gpu1:/x') is a HOST:DIR source"),
    ('[[source]]\nname = "a"\nsource = "rsync://h/m/"\nwatch = true\n', "is an rsync daemon"),
    ('[[source]]\nname = "a"\nsource = "h:/x"\ncompress = "zstd"\n',
     "'compress' must be true or false (no quotes), not 'zstd'"),
    ('[[source]]\nname = "a"\nsource = "/x"\ncompress = true\n',
     "'compress' only applies to HOST:DIR and rsync daemon sources, and '/x' is a local "
     "folder"),
    ('[[source]]\nname = "a"\nsource = "rclone:s3:b/"\ncompress = true\n',
     "is an rclone remote"),
    ('source = "oops"\n', "write each source as a [[source]] table"),
    ('[server]\nport = 1\n', "unknown top-level key(s) ['server']"),
    ('[[source]\nname = "a"', "is not valid TOML"),
])
def test_bad_toml_is_one_sentence(tmp_path, text, needle):
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.build_config(str(tmp_path / "logs"), [], path, str(tmp_path / "staging"))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and message.endswith(".")


def test_rsh_and_watch_from_toml_and_flags(tmp_path):
    path = write_toml(tmp_path, '''
[[source]]
name = "pod"
source = "trainer-0:/workspace/logs/"
rsh = "kubectl exec -i -n ml {host} --"

[[source]]
name = "inbox"
source = "/srv/inbox/"
watch = true
''')
    cfg = config.build_config(str(tmp_path / "logs"), ["node2=/srv/inbox2/"], path,
                              str(tmp_path / "staging"), watch_names=["node2"])
    node2, pod, inbox = cfg.sources
    assert pod.rsh == "kubectl exec -i -n ml {host} --" and pod.ssh is None
    assert pod.is_remote_shell and not pod.watch
    assert inbox.watch and node2.watch


@pytest.mark.parametrize("names,needle", [
    (["nope"], "Cannot watch 'nope': no source has that name (configured: local, far)"),
    (["far"], "Watching source 'far' (--rsync_watch in TensorBoard, --watch-source for "
              "tb-rsync watch) only applies to local folders"),
])
def test_bad_watch_names(tmp_path, names, needle):
    with pytest.raises(ConfigError) as info:
        config.build_config(str(tmp_path), ["local=/x/", "far=gpu1:/x/"],
                            staging=str(tmp_path.parent / "st"), watch_names=names)
    assert needle in str(info.value)


@pytest.mark.parametrize("pair,needle", [
    ("justaname", "NAME=SOURCE"),
    ("=/x/", "NAME=SOURCE"),
    ("a=", "NAME=SOURCE"),
    ("../a=/x/", "plain folder name"),
])
def test_bad_pairs(pair, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        config.build_config(str(tmp_path), [pair], staging=str(tmp_path.parent / "st"))


def test_pairs_keep_equals_signs_in_the_source(tmp_path):
    cfg = config.build_config(str(tmp_path), ["lr=host:/runs/lr=0.1/"],
                              staging=str(tmp_path.parent / "st"))
    assert cfg.sources[0].source == "host:/runs/lr=0.1/"


def test_staging_must_not_overlap_the_logdir(tmp_path):
    for staging in (tmp_path / "inside", tmp_path, tmp_path.parent):
        with pytest.raises(ConfigError, match="outside the logdir"):
            config.build_config(str(tmp_path), ["a=/x/"], staging=str(staging))


@pytest.mark.parametrize("source", ["logs", "logs/run", ".", "staging", "staging/staging/a"])
def test_a_local_source_overlapping_the_logdir_or_staging_is_refused(tmp_path, source):
    """Equal, holding or inside, after resolving symlinks: a source holding the logdir nests
    it one level deeper every sync; one holding the staging root publishes its state."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / source)
    for spelled in (tmp_path / source, tmp_path / "link", f"{tmp_path}/elsewhere/../{source}"):
        with pytest.raises(ConfigError) as e:
            config.build_config(str(tmp_path / "logs"), [f"a={spelled}/"],
                                staging=str(tmp_path / "staging"))
        what = "the logdir" if source.startswith("logs") or source == "." else \
            "the staging folder"
        message = str(e.value)
        assert message.startswith(f"Source 'a' ('{os.path.abspath(spelled)}') overlaps {what} ")
        assert str(tmp_path / ("staging" if what.endswith("folder") else "logs")) in message


def test_a_local_source_apart_from_both_is_accepted(tmp_path):
    (tmp_path / "logs").mkdir()
    for source in (tmp_path / "logs-2", tmp_path / "stag", "host:" + str(tmp_path / "logs")):
        config.build_config(str(tmp_path / "logs"), [f"a={source}/"],
                            staging=str(tmp_path / "staging"))


def test_a_logdir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "events").write_text("")
    with pytest.raises(ConfigError, match=r"Logdir '.*events' is a file, not a folder; pass"):
        config.build_config(str(tmp_path / "events"), ["a=/x/"], staging=str(tmp_path / "st"))


def test_default_staging_is_per_logdir_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "logs a").mkdir()
    (tmp_path / "logs b").mkdir()
    a = config.build_config(str(tmp_path / "logs a"), ["a=/x/"])
    b = config.build_config(str(tmp_path / "logs b"), ["a=/x/"])
    assert a.staging_root.startswith(str(tmp_path / "cache" / "tb-rsync"))
    assert a.staging_root != b.staging_root
    assert a.staging_root == config.build_config(str(tmp_path / "logs a") + "/", []).staging_root


def test_missing_logdir_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; create it \(mkdir -p"):
        config.build_config(str(tmp_path / "nope"), ["a=/x/"], staging=str(tmp_path / "st"))


def test_missing_config_file_and_remote_logdir(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; check the path"):
        config.build_config(str(tmp_path), [], str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not a local folder"):
        config.build_config("gs://bucket/logs", ["a=/x/"])


def test_interval_flag():
    assert config.parse_interval("2.5") == 2.5
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="--rsync_interval"):
            config.parse_interval(bad)


def test_missing_rsync_is_a_sentence(monkeypatch):
    monkeypatch.setenv("PATH", os.devnull)
    with pytest.raises(ConfigError, match="rsync is not installed"):
        config.find_rsync()


def test_ssh_sharing_per_source_and_for_all(tmp_path):
    path = write_toml(tmp_path, '[[source]]\nname = "a"\nsource = "h:/x"\nssh_sharing = false\n'
                                '[[source]]\nname = "b"\nsource = "h:/y"\n')
    cfg = config.build_config(str(tmp_path / "logs"), [], path, str(tmp_path / "staging"))
    assert [s.ssh_sharing for s in cfg.sources] == [False, True] and cfg.ssh_sharing
    off = config.build_config(str(tmp_path / "logs"), [], path, str(tmp_path / "staging"),
                              ssh_sharing=False)
    assert not off.ssh_sharing


def test_the_longest_source_name_syncs_and_a_longer_one_is_one_sentence(tmp_path):
    """A name is a folder under the logdir and the stem of locks/NAME.unpublished and
    state/NAME.jsonl.lock: at MAX_NAME_BYTES (81 three-byte CJK characters) a real sync
    writes all of them; a byte more, a 250-character name or 85 CJK characters (255 bytes)
    are refused up front with the limit, instead of a crash ("this is a bug") mid-sync."""
    from tests.test_cli import EVENTS, make_remote, steps_in, tb_rsync
    remote, logdir = make_remote(tmp_path)
    longest = "日" * (config.MAX_NAME_BYTES // 3)
    assert len(longest.encode("utf-8")) == config.MAX_NAME_BYTES
    result = tb_rsync("sync", "--logdir", logdir, "--source", f"{longest}={remote}/",
                      "--staging", tmp_path / "staging")
    assert result.returncode == 0, result.stderr
    assert steps_in(logdir / longest / "run 1" / EVENTS) == [0, 1, 2, 3]
    assert sorted(os.listdir(tmp_path / "staging" / "state")) == [f"{longest}.jsonl",
                                                                f"{longest}.jsonl.lock"]
    for name in (longest + "a", "a" * 250, "日" * 85):
        result = tb_rsync("sync", "--logdir", logdir, "--source", f"{name}={remote}/",
                          "--staging", tmp_path / "staging")
        size = len(name.encode("utf-8"))
        assert result.returncode == 1, result.stderr
        assert f"name is {size} bytes long in UTF-8; a source name may have at most " \
               f"{config.MAX_NAME_BYTES} bytes (a folder name's 255, less room for " \
               "tb-rsync's own files), so shorten it." in result.stderr
        assert "Traceback" not in result.stderr
