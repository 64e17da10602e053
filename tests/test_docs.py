"""The docs tell the truth about the files, flags, commands and messages they name.

- every relative link and image in README.md and docs/*.md points to an existing file (and
  heading, for `#anchor` links);
- every `--rsync_*` flag (and every TensorBoard flag with an underscore) the README names is
  defined, and every `tb-rsync` command line it shows parses with `cli.build_parser()`;
- the README's test command is exactly what .ci/run extracts and runs, and its demo command
  names files that exist;
- the README's table of tested versions comes from scripts/version-matrix.py's current rows,
  all passed, and setup.py's TensorBoard and Python floors are its oldest;
- the status JSON example in docs/API.md has exactly the keys a real snapshot has;
- docs/TROUBLESHOOTING.md explains every user-facing message listed in `MESSAGES` below, and
  each of those fragments still exists in the code (so the list cannot silently go stale).
"""

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from tensorboard.plugins.core import core_plugin

from tb_rsync_plugin import cli
from tb_rsync_plugin.tensorboard.plugin import RsyncPluginLoader

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TROUBLESHOOTING = ROOT / "docs" / "TROUBLESHOOTING.md"
DOCS = [README] + sorted((ROOT / "docs").glob("*.md"))
README_TEST_COMMAND = ("scripts/install-system-deps.sh && pip install -q -e '.[test]' "
                       "&& python -m pytest -q")

_FENCE_RE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN_RE = re.compile(r"`[^`\n]*`")
_LINK_RE = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING_RE = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def text_of(path):
    return path.read_text(encoding="utf-8")


def prose(markdown):
    """Markdown without fenced blocks and code spans, where links cannot live."""
    return _CODE_SPAN_RE.sub("", _FENCE_RE.sub("", markdown))


def code_fragments(markdown):
    """Lines of fenced blocks and the contents of code spans."""
    fragments = []
    for block in _FENCE_RE.findall(markdown):
        fragments += block.splitlines()[1:-1]
    fragments += [span[1:-1] for span in _CODE_SPAN_RE.findall(_FENCE_RE.sub("", markdown))]
    return fragments


def github_slug(heading):
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown):
    return {github_slug(h) for h in _HEADING_RE.findall(_FENCE_RE.sub("", markdown))}


# --- (a) links ------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_exist(doc):
    markdown = text_of(doc)
    links = _LINK_RE.findall(prose(markdown))
    broken = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(text_of(file)):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, f"{doc.name} has broken links:\n" + "\n".join(broken)


def test_readme_shows_the_screenshot():
    assert "](docs/sync-tab.png)" in text_of(README)


# --- (b) flags and commands -----------------------------------------------------------------

def tensorboard_parser():
    """TensorBoard's core flags and the plugin's, as `tensorboard` parses them."""
    parser = argparse.ArgumentParser(conflict_handler="resolve")
    core_plugin.CorePluginLoader().define_flags(parser)
    RsyncPluginLoader().define_flags(parser)
    return parser


def tensorboard_options():
    return {o for a in tensorboard_parser()._actions for o in a.option_strings}


def plugin_options():
    parser = argparse.ArgumentParser()
    RsyncPluginLoader().define_flags(parser)
    return {o for a in parser._actions for o in a.option_strings}


def test_rsync_flags_named_in_readme_exist():
    named = set(re.findall(r"--rsync_[a-z_]+", text_of(README)))
    assert named >= {"--rsync_source", "--rsync_config", "--rsync_interval", "--rsync_staging"}
    assert named <= plugin_options(), named - plugin_options()


def test_readme_documents_every_rsync_flag():
    assert plugin_options() - {"-h", "--help"} <= set(re.findall(r"--rsync_[a-z_]+",
                                                                 text_of(README)))


def test_tensorboard_flags_named_in_readme_exist():
    # TensorBoard's flags are the ones spelled with underscores (rsync's use hyphens).
    named = set(re.findall(r"(?<![\w-])--[a-z]+(?:_[a-z]+)+", text_of(README)))
    assert "--load_fast" in named and "--reload_interval" in named
    assert named <= tensorboard_options(), named - tensorboard_options()


def cli_subparsers():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, commands.choices


def tb_rsync_command_lines(markdown):
    """Every code line or span that is a `tb-rsync ...` command line."""
    lines = []
    for fragment in code_fragments(markdown):
        fragment = fragment.strip()
        if fragment.startswith("$ "):
            fragment = fragment[2:]
        if fragment.startswith("tb-rsync ") or fragment == "tb-rsync":
            lines.append(fragment)
    return lines


def test_tb_rsync_commands_in_readme_exist():
    parser, subparsers = cli_subparsers()
    top_options = {o for a in parser._actions for o in a.option_strings}
    lines = tb_rsync_command_lines(text_of(README))
    shown = set()
    problems = []
    for line in lines:
        words = line.split()
        if len(words) < 2:
            continue
        if words[1].startswith("-"):
            options, allowed = [words[1]], top_options
        else:
            command = words[1]
            if command not in subparsers:
                problems.append(f"{line}: no subcommand {command!r}")
                continue
            shown.add(command)
            options = re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)
            allowed = {o for a in subparsers[command]._actions for o in a.option_strings}
        problems += [f"{line}: no option {o}" for o in options if o not in allowed]
    assert not problems, "\n".join(problems)
    assert shown == set(subparsers), f"README shows no command line for {set(subparsers) - shown}"


def test_tb_rsync_options_in_readme_prose_exist():
    """Options named after `tb-rsync` subcommands in the usage section exist somewhere."""
    _, subparsers = cli_subparsers()
    options = {o for p in subparsers.values() for a in p._actions for o in a.option_strings}
    section = text_of(README).split("### The `tb-rsync` command", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(?<![\w-])--[a-z]+(?:-[a-z]+)*(?![\w=])", section))
    named = {n for n in named if "_" not in n}
    assert named <= options, named - options


def test_exit_codes_in_readme_match_the_cli():
    readme = text_of(README)
    for code in (cli.EXIT_OK, cli.EXIT_FAILED, 2, cli.EXIT_BUG, cli.EXIT_INTERRUPTED):
        assert f"`{code}`" in readme, f"exit code {code} is not documented"


# --- (c) the set-up commands ----------------------------------------------------------------

def marked_block(name):
    """The lines between `<!-- name -->` and `<!-- /name -->`, fences included."""
    match = re.search(rf"^<!-- {name} -->\n(.*?)^<!-- /{name} -->$", text_of(README),
                      re.S | re.M)
    assert match, f"README has no <!-- {name} --> block"
    return match.group(1)


def test_readme_test_command_is_what_ci_runs():
    ci = text_of(ROOT / ".ci" / "run")
    extraction = next(line for line in ci.splitlines() if line.startswith("cmd=$("))
    script = extraction + '\nprintf %s "$cmd"'
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, check=True)
    assert result.stdout == README_TEST_COMMAND
    assert marked_block("test-command") == f"```\n{README_TEST_COMMAND}\n```\n"
    assert text_of(README).count("<!-- test-command -->") == 1


def version_tuple(text):
    return tuple(int(part) for part in text.split("."))


def test_readme_tested_versions_table_backs_setup_py():
    """scripts/version-matrix.py wrote the table from a run of its current rows, every row
    passed, and setup.py's floors (and the README's sentence) are its oldest row's."""
    lines = [line for line in marked_block("tested-versions").splitlines()
             if line.startswith("|") and not line.startswith("|---")]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:]]
    assert len(rows) >= 3, "README's tested-versions table is missing; run " \
                           "scripts/version-matrix.py"
    for row in rows:
        assert re.fullmatch(r"\d+ passed", row[-1]), f"a tested-versions row did not pass: {row}"
    spec = importlib.util.spec_from_file_location("version_matrix",
                                                  ROOT / "scripts" / "version-matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    pinned = [tb for tb, _, _ in matrix.MATRIX if tb != matrix.LATEST]
    assert [row[0] for row in rows][:len(pinned)] == pinned, \
        "the table is not from the script's current rows; run scripts/version-matrix.py"
    setup = text_of(ROOT / "setup.py")
    tb_floor = re.search(r'"tensorboard>=([\d.]+)"', setup).group(1)
    python_floor = re.search(r'python_requires=">=([\d.]+)"', setup).group(1)
    oldest = min(rows, key=lambda row: version_tuple(row[0]))
    assert version_tuple(oldest[0])[:2] == version_tuple(tb_floor)[:2]
    assert min(version_tuple(row[1])[:2] for row in rows) == version_tuple(python_floor)[:2]
    newest_python = max(version_tuple(row[1])[:2] for row in rows)
    assert f"TensorBoard {tb_floor} or later, on Python {python_floor} to " \
           f"{newest_python[0]}.{newest_python[1]}." in text_of(README)


def test_readme_demo_command_names_existing_files():
    block = marked_block("demo-command")
    lines = [l for l in block.splitlines() if not l.startswith("```")]
    assert len(lines) == 1
    words = [w for w in shlex.split(lines[0]) if w != "&&"]
    paths = [w for w in words if "/" in w and not w.startswith("-")]
    assert "demo/run_demo.py" in paths and "scripts/install-system-deps.sh" in paths
    for path in paths:
        assert (ROOT / path).is_file(), f"the demo command names {path}, which does not exist"
    assert os.access(ROOT / "scripts" / "install-system-deps.sh", os.X_OK)
    assert "pip install -e ." in lines[0] and (ROOT / "setup.py").is_file()


def test_readme_installs_for_users_first_and_explains_the_problem_after_usage():
    """A new user reads how to install before why; the names in it are the real ones."""
    readme = text_of(README)
    headings = _HEADING_RE.findall(_FENCE_RE.sub("", readme))
    order = [headings.index(h) for h in ("Install", "Set up", "Usage", "The problem")]
    assert order == sorted(order), headings
    install = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    distribution = re.search(r'name="([^"]+)"', text_of(ROOT / "setup.py")).group(1)
    assert f"pip install \"{distribution} @ git+" in install
    for needed in ("python3 -m venv", "pip install ./", "error: externally-managed-environment",
                   "rsync", "ssh"):
        assert needed in install, needed
    set_up = " ".join(readme.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0].split())
    assert "Only these need `scripts/install-system-deps.sh`" in set_up


def test_demo_command_lines_in_readme_parse():
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "demo" / "run_demo.py")
    run_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_demo)
    lines = [f.strip() for f in code_fragments(text_of(README))
             if f.strip().startswith("python demo/run_demo.py")]
    assert any("--compare" in l for l in lines)
    for line in lines:
        args = shlex.split(line.split("&&")[0])[2:]
        run_demo.parse_args(args)  # SystemExit (a failure) on an unknown option
    # The options listed in the paragraph about the demo.
    options = set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"', text_of(ROOT / "demo" / "run_demo.py")))
    paragraph = text_of(README).split("The demo starts", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(?<![\w-])--[a-z]+(?:-[a-z]+)*(?![\w=])", paragraph))
    assert "--compare" in named and named <= options, named - options


# --- (d) troubleshooting ----------------------------------------------------------------------

# (module, a literal fragment of one user-facing message). Each fragment must appear in that
# module and in docs/TROUBLESHOOTING.md. Add a row when you add a message.
MESSAGES = [
    ("config_file.py", "is not NAME=SOURCE; write it like"),
    ("config_file.py", "does not exist; check the path."),
    ("config_file.py", "cannot be read ("),
    ("config_file.py", "is not valid TOML:"),
    ("config_file.py", "only [[source]] and [[discover]] tables are allowed."),
    ("config_file.py", "write each source as a [[source]] table."),
    ("config_file.py", "unknown key(s)"),
    ("config_file.py", "must be a non-empty string."),
    ("config_file.py", "is not a plain folder name; use letters, digits, "),
    ("config_file.py", "must be a command such as"),
    ("config_file.py", "'ssh' cannot be parsed ("),
    ("config_file.py", "'ssh' is empty; write a command"),
    ("config_file.py", "'ssh' only applies to host:dir sources, and "),
    ("config_file.py", "'rsh' must be a command such as "),
    ("config_file.py", "'rsh' cannot be parsed ("),
    ("config_file.py", "'rsh' and 'ssh' cannot be used together ('rsh' "),
    ("config_file.py", "'rsh' only applies to HOST:DIR sources (HOST being "),
    ("config_file.py", "with 'rsh', write the source as POD:DIR without "),
    ("config_file.py", "'watch' must be true or false, not "),
    ("config.py", "only applies to local folders (an inbox that nodes push "),
    ("config.py", "(--rsync_watch in TensorBoard, --watch-source for tb-rsync watch)"),
    ("config.py", "no source has that name (configured: "),
    ("rsync_errors.py", "rsync is not installed in the container; install it in the image "),
    ("rsync_errors.py", "the 'rsh' command could not be "),
    ("remote_shell.py", "tb-rsync: the remote shell '"),
    ("inbox.py", "does not exist yet; "),
    ("inbox.py", "asking for a sync of watched source %r failed"),
    ("inbox.py", "it is watched as soon as it does."),
    ("inbox.py", "it is synced "),
    ("inbox.py", "on its interval only (if the inotify limit was reached, raise "),
    ("cli.py", "tables; add one or pass --source NAME=SOURCE."),
    ("cli.py", "'tb-rsync status' lists the ones there."),
    ("cli.py", "(published files stay in the logdir)."),
    ("config_file.py", "must be a list of rsync patterns."),
    ("config_file.py", "'timeout' must be more than 0 seconds."),
    ("config.py", "a whole number"),
    ("config.py", "must be a number of seconds, not"),
    ("config.py", "must be 0 (only on request) or a positive number of seconds."),
    ("config.py", "No logdir given; pass --logdir DIR."),
    ("config.py", "is not a local folder; tb-rsync publishes into a local logdir."),
    ("config.py", "is used twice; give each source its own name."),
    ("config.py", "load half-copied files as runs. Choose a staging folder outside the logdir "),
    ("config.py", "rsync is not installed or not on PATH"),
    ("plugin.py", "--rsync_source needs --logdir (a single local folder to publish "),
    ("cli.py", "No sources given; add --source NAME=SOURCE or --config FILE."),
    ("config.py", "must be more than 0 seconds."),
    ("config_file.py", " (did you mean "),
    ("cli.py", "Run 'tb-rsync sync' first."),
    ("cli.py", "interrupted"),
    ("cli.py", "error: this is a bug in tb-rsync; please report it with the traceback above."),
    ("transfer.py", "cannot create the {what} folder"),
    ("rsync_run.py", "install rsync or fix the path."),
    ("rsync_errors.py", "could not write its file list into "),
    ("reload.py", "is in the way; "),
    ("locks.py", "with different staging folders must not sync one source "),
    ("process.py", "was cancelled."),
    ("process.py", "the source is slow or unreachable "),
    ("rsync_run.py", "file(s) vanished "),
    ("rsync_run.py", "the source and were skipped (first: "),
    ("rsync_errors.py",
     "the source is a file, not a directory; name the folder that holds the runs"),
    ("rsync_errors.py", "rsync was killed by signal "),
    ("ssh.py", "the host key of the server is unknown or changed; "),
    ("ssh.py", "the host key of the server changed; "),
    ("ssh.py", "ssh could not log in non-interactively; set up a key or agent "),
    ("ssh.py", "the host name could not be resolved; check its spelling"),
    ("ssh.py", "the host is unreachable (connection refused); check the host, "),
    ("ssh.py", "the host is unreachable (connection timed out); check the host, "),
    ("ssh.py", "the host is unreachable (no route to host); check the network"),
    ("ssh.py", "the host is unreachable (network unreachable)"),
    ("ssh.py", "the server refused the connection: too many at once (sshd MaxStartups); sync fewer "),
    ("ssh.py", "connected, but the server never "),
    ("ssh.py", "the ssh login did "),
    ("ssh.py", "check that 'ssh HOST true' works "),
    ("ssh.py", "ssh connection closed during the sync, again after a fresh login; "),
    ("ssh.py", "check what ends ssh processes or connections here, or turn sharing "),
    ("ssh.py", "an ssh master; remove it, or turn sharing off for this source "),
    ("ssh.py", "ssh failed with exit code"),
    ("ssh.py", "install the OpenSSH client or fix 'ssh' for this source."),
    ("ssh.py", "for shared ssh connections cannot be created "),
    ("ssh.py", "check that its parent folder is writable, or turn sharing off "),
    ("ssh.py", "for shared ssh connections is not a private "),
    ("ssh.py", "(--rsync_ssh_sharing false, tb-rsync --no-ssh-sharing)."),
    ("config_file.py", "'ssh_sharing' must be true or false (no quotes), "),
    ("rsync_errors.py", "the rsync daemon has no such module; check the module name "),
    ("rsync_errors.py", "the rsync daemon refused the login; tb-rsync cannot type a "),
    ("rsync_errors.py", "the disk holding the staging folder is full; free space "),
    ("rsync_errors.py", "the disk quota of the staging folder is exceeded; free space"),
    ("rsync_errors.py", "rsync is not installed on the remote host; install it there"),
    ("rsync_errors.py", "the connection stalled (no data for too long); "),
    ("rsync_errors.py", "the connection closed unexpectedly; check that "),
    ("rsync_errors.py", "there is no such directory at the source; check the path"),
    ("rsync_errors.py", "permission was denied reading the source or writing the staging folder"),
    ("rsync_errors.py", "rsync rejected its arguments"),
    ("rsync_errors.py", "the rsync versions are incompatible"),
    ("rsync_errors.py", "the rsync daemon refused the session"),
    ("rsync_errors.py", "the connection to the source failed"),
    ("rsync_errors.py", "rsync was killed"),
    ("rsync_errors.py", "the rsync daemon did not answer in time"),
    ("rsync_errors.py", "ssh failed"),
    ("rsync_errors.py", "rsync failed with exit code"),
    ("service.py", "is already being synced; wait for it to finish."),
    ("config.py", "rclone is not installed or not on PATH, and rclone: sources need it"),
    ("config_file.py", "names no rclone remote; write it "),
    ("config_file.py", "'rclone_config' and 'rclone_flags' only apply to "),
    ("config_file.py", "must be the path of an rclone "),
    ("config_file.py", "rclone config file '{path}' does not exist; "),
    ("config_file.py", "'rclone_flags' must be a list of rclone flags, each "),
    ("config.py", "an rclone remote"),
    ("rclone_log.py", "list them with 'rclone listremotes' (or set "),
    ("rclone_log.py", "there is no such bucket; check the bucket name"),
    ("rclone_log.py", "the storage refused rclone's credentials; check the keys in rclone's config or "),
    ("rclone_log.py", "there is no such bucket or folder at the source; check the bucket name and path "),
    ("rclone_log.py", "rclone could not use the CA bundle that AWS_CA_BUNDLE names; unset AWS_CA_BUNDLE for "),
    ("rclone_log.py", "rclone rejected an 'include' or 'exclude' pattern; check them"),
    ("rclone_log.py", "rclone rejected a flag; check 'rclone_flags' (and 'rclone help flags')"),
    ("rclone_log.py", "the storage endpoint is unreachable; check the endpoint in rclone's config and the "),
    ("rclone_log.py", "the disk holding the staging folder is full; free space or choose another staging "),
    ("rclone_log.py", "rclone was killed by signal "),
    ("rclone_log.py", "rclone failed with exit code "),
    ("rclone.py", "rclone or fix the path."),
    ("rclone.py", "could not read rclone's "),
    ("rclone.py", "could not write into "),
    ("rclone.py", "cannot be a file path (first: "),
    ("rclone.py", "could not be put into the "),
    ("locks.py", "is being synced by another tb-rsync process "),
    ("service.py", "please report it."),
    ("errors.py", "nothing after it is published until the file is fixed or rewritten at the source."),
    ("tfrecord.py", "bad length checksum"),
    ("tfrecord.py", "bad data checksum"),
    ("publish.py", "does not exist; create it or fix --logdir."),
    ("config.py", "does not exist; create it (mkdir -p"),
    ("config.py", "is a file, not a folder; pass the folder that "),
    ("config.py", "tb-rsync would publish its own output. Choose "),
    ("config.py", "a source folder that neither holds nor lies inside it"),
    ("config.py", "a staging folder apart from the source "),
    ("publish.py", "is not writable by this user; fix its permissions or "),
    ("publish.py", "is a file, not a folder; move it away so source"),
    ("publish.py", "is a symlink leading out of the logdir; replace it with a folder "),
    ("publish.py", "TensorBoard would load its "),
    ("publish.py", "does not exist; sync the source before publishing."),
    ("service.py", "symlink(s) at the source were not published "),
    ("report.py", "lies in a symlinked folder at the source; symlinks are never followed"),
    ("publish.py", "is outside the staging folder; it is not published"),
    ("file_publisher.py", "tb-rsync never writes outside it."),
    ("file_publisher.py", "in the logdir is a file where the source has a "),
    ("file_publisher.py", "in the logdir is a symlink; tb-rsync never writes "),
    ("file_publisher.py", "is a folder in the logdir where the source "),
    ("file_publisher.py", "in the logdir is not a regular file; move it "),
    ("file_publisher.py", "fix the file or folder in the logdir and sync again."),
    ("file_publisher.py", "could not be fetched whole again; the published copy "),
    ("file_publisher.py", "the next sync rescans the "),
    ("file_publisher.py", "writes outside the logdir, so replace the symlink with a folder."),
    ("atomic.py", "is full; free space and sync again."),
    ("atomic.py", "is used up; free space or raise the quota "),
    ("atomic.py", "would grow past the largest file allowed"),
    ("atomic.py", "tb-rsync is not allowed to write '{path}'; give this user write "),
    ("atomic.py", "is on a read-only filesystem; remount it read-write or choose "),
    ("reload.py", "restart TensorBoard to see the new "),
    ("reload.py", "(TensorBoard runs with --reload_interval 0.)"),
    ("reload.py", "(The staging folder is on another filesystem.)"),
    ("reload.py", "(TensorBoard did not drop the run in time.)"),
    ("reload.py", "exists, so its parked copy stays at"),
    ("reload.py", "reloading run %r failed"),
    ("service.py", "sync of %r failed unexpectedly"),
    ("service.py", "cannot save state to"),
    ("service.py", "asking TensorBoard what it has loaded failed"),
    ("freshness.py", "TensorBoard shows the newest published event."),
    ("freshness.py", "Published; no events with a time yet."),
    ("reload.py", "Published; TensorBoard's fast loader shows it at its "),
    ("reload.py", "Published; TensorBoard is reloading this run."),
    ("reload.py", "--reload_interval 0 and never reloads: restart it to see this."),
    ("reload.py", "Published; no TensorBoard attached to ask what it shows."),
    ("reload.py", "No TensorBoard attached: publishing only."),
    ("reload.py", "Runs are reloaded right after each publish (--load_fast=false)."),
    ("reload.py", "TensorBoard runs with --reload_interval 0: its fast loader read the "),
    ("plugin.py", "Missing header {CSRF_HEADER}: 1."),
    ("plugin.py", "Send a JSON body (Content-Type: application/json)."),
    ("plugin.py", "The body is not valid JSON."),
    ("plugin.py", "'source' must be a string."),
    ("plugin.py", "Request body too large (limit"),
    ("plugin.py", "is configured "),
    ("plugin.py", "Use GET."),
    ("plugin.py", "Use POST."),
    ("config.py", "must be a whole number of syncs, not"),
    ("config_file.py", "'max_per_host' must be at least 1."),
    ("cli_output.py", "retrying in "),
    ("cli.py", "tb-rsync: stopped ("),
    ("cli_output.py", "syncs again after "),
    ("cli.py", "must be at least 1."),
    ("service.py", "tb-rsync: sync of %r failed (retrying in "),
    ("service.py", "syncs again after %d failed attempt(s)."),
    ("plugin.py", "Keeping the running configuration."),
    ("plugin.py", "tb-rsync: re-read %s: %d source(s)."),
    ("plugin.py", "tb-rsync: following the edit of %s failed"),
    ("service.py", "is no longer configured."),
    ("prune.py", "is being synced by another tb-rsync process; "),
    ("prune.py", "is not a source name; 'tb-rsync status' lists them."),
    ("prune.py", "right now."),
    ("config.py", "must be a number of "),
    ("cli.py", "freed in the staging folder."),
]


def test_troubleshooting_fragments_are_current():
    """Each fragment still exists in the code (a renamed message must update the doc)."""
    stale = []
    for module, fragment in MESSAGES:
        (path,) = (ROOT / "tb_rsync_plugin").rglob(module)
        source = text_of(path)
        if fragment not in source:
            stale.append(f"{module}: {fragment!r}")
    assert not stale, "messages no longer in the code:\n" + "\n".join(stale)


def doc_form(fragment):
    """How a code fragment reads in the doc: placeholders and %-formats become text."""
    fragment = fragment.replace("{CSRF_HEADER}", "X-TB-Rsync")
    fragment = fragment.replace("'{path}'", "'…'").replace("{what}", "staging")
    return re.sub(r"%[rsd]", "…", fragment)


def test_troubleshooting_explains_every_message():
    doc = text_of(TROUBLESHOOTING)
    missing = [f"{m}: {doc_form(f)!r}" for m, f in MESSAGES if doc_form(f) not in doc]
    assert not missing, "docs/TROUBLESHOOTING.md does not mention:\n" + "\n".join(missing)


def test_readme_links_troubleshooting():
    assert "](docs/TROUBLESHOOTING.md)" in text_of(README)


def test_api_doc_status_example_has_the_real_keys():
    """docs/API.md's `GET status` example lists every field a real snapshot has, no more."""
    from tb_rsync_plugin import config
    from tb_rsync_plugin.publishing import report as report_lib
    from tb_rsync_plugin.transports import transfer
    from tb_rsync_plugin.engine import state
    text = (ROOT / "docs" / "API.md").read_text()
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    real = state.SyncState([config.Source("train", "/src/")], lambda source: 30.0)
    report = report_lib.PublishReport(actions=(), needs_restage=(), errors=(),
                                      runs={"train/a": report_lib.RunUpdate("train/a", 1.0, 1)})
    real.finish("train", transfer.TransferResult(), report, {})
    snapshot = real.snapshot()
    assert set(example) == set(snapshot)
    assert set(example["sources"][0]) == set(snapshot["sources"][0])
    assert set(example["runs"][0]) == set(snapshot["runs"][0])
