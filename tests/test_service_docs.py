"""docs/SERVICE.md tells the truth: its systemd units parse (a structural check always, and
`systemd-analyze verify` where systemd is installed), have what a long-running service
needs, and every command in the units and the container lines uses real flags."""

import os
import re
import shlex
import shutil
import subprocess

import pytest

from tb_rsync_plugin import cli
from tests.test_docs import ROOT, tensorboard_parser

SERVICE = ROOT / "docs" / "SERVICE.md"
UNITS = ("tensorboard-rsync.service", "tb-rsync-watch.service")
IMAGE = "tensorboard-rsync"


def files():
    """{name: text} of the fenced blocks marked `<!-- file: NAME -->` in docs/SERVICE.md."""
    text = SERVICE.read_text(encoding="utf-8")
    return dict(re.findall(r"^<!-- file: (\S+) -->\n```[a-z]*\n(.*?)^```$", text, re.S | re.M))


def unit_sections(text):
    """{section: [(key, value), ...]} of a unit file; fails on a line that is not one."""
    sections, current = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if re.fullmatch(r"\[[A-Za-z]+\]", line):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep and re.fullmatch(r"[A-Za-z]+", key), \
            f"line {number} is not KEY=VALUE in a section: {line!r}"
        current.append((key, value))
    return sections


def service_keys(name):
    return dict(unit_sections(files()[name])["Service"])


def check_command(argv):
    """`argv` (a command, then its arguments) parses with the program's own flags."""
    program = os.path.basename(argv[0])
    assert program in ("tensorboard", "tb-rsync"), argv
    parser = tensorboard_parser() if program == "tensorboard" else cli.build_parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{program} refuses the arguments {argv[1:]} (see its message above)")


def test_service_md_has_the_files_it_describes():
    assert set(files()) == {*UNITS, "Dockerfile", "docker-run.sh"}


@pytest.mark.parametrize("name", UNITS)
def test_unit_restarts_on_failure_stops_cleanly_and_logs_lines(name):
    sections = unit_sections(files()[name])
    assert set(sections) == {"Unit", "Service", "Install"}
    service = dict(sections["Service"])
    assert service["Restart"] == "on-failure"
    # SIGTERM to the main process only: it stops its rsyncs and ssh logins itself.
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["Environment"] == "PYTHONUNBUFFERED=1"
    assert dict(sections["Install"])["WantedBy"] == "default.target"


def test_watch_unit_counts_its_sigterm_exit_as_clean():
    assert service_keys("tb-rsync-watch.service")["SuccessExitStatus"] == \
        str(128 + 15)  # cli.py: a stop signal exits 128 + its number


@pytest.mark.parametrize("name", UNITS)
def test_unit_commands_use_real_flags(name):
    check_command(shlex.split(service_keys(name)["ExecStart"].replace("%h", "/home/me")))


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verifies_the_unit(name, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the structural checks above ran")
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    # verify also checks that ExecStart's program exists and is executable.
    program = home / shlex.split(service_keys(name)["ExecStart"])[0].replace("%h/", "")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / name
    unit.write_text(files()[name])
    result = subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60,
                            env=dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime)))
    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert result.returncode == 0 and not result.stdout + result.stderr, \
        result.stdout + result.stderr


def test_image_has_rsync_and_the_ssh_client_and_a_user_for_the_mounted_keys():
    dockerfile = files()["Dockerfile"]
    install = next(line for line in dockerfile.splitlines() if "apt-get install" in line)
    assert {"rsync", "openssh-client"} <= set(install.split())
    assert re.search(r"useradd .*--uid \"\$UID\" tb\b", dockerfile)
    assert "\nUSER tb\n" in dockerfile


def test_container_commands_use_real_flags_and_mount_ssh_read_only():
    script = files()["docker-run.sh"].replace("\\\n", " ")
    commands = [shlex.split(line) for line in script.splitlines() if line.strip()]
    assert len(commands) == 2
    for words in commands:
        assert words[:3] == ["docker", "run", "-d"] and "--init" in words
        assert "~/.ssh:/home/tb/.ssh:ro" in words
        check_command(words[words.index(IMAGE) + 1:])
