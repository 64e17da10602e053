"""What is running, read from /proc: for tests that must leave no process behind."""

import os


def process_table():
    """{pid: (ppid, name, cmdline)} of every live (non-zombie) process but this one."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode("utf-8", "replace")
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] == b"Z":
            continue
        table[int(entry)] = (int(fields[1]), name, cmdline.strip())
    return table


def processes_mentioning(text, name=None):
    """[(pid, cmdline)] of processes whose command line contains `text` (and named `name`)."""
    return [(pid, cmdline) for pid, (_, proc_name, cmdline) in sorted(process_table().items())
            if text in cmdline and (name is None or proc_name == name)]


def slow_source_config(folder, mib, kib_per_s):
    """A TOML config with one source, `slow`, that keeps rsync busy for mib*1024/kib_per_s s.

    For tests that must catch a sync in flight (joining clicks, stopping mid-transfer).
    """
    remote = folder / "slow-remote"
    remote.mkdir()
    (remote / "big.bin").write_bytes(os.urandom(mib << 20))
    toml = folder / "sources.toml"
    toml.write_text(f'[[source]]\nname = "slow"\nsource = "{remote}/"\n'
                    f'bwlimit = {kib_per_s}\n')
    return toml
