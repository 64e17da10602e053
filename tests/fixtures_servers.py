"""Real servers on 127.0.0.1 for transfer tests: sshd and `rsync --daemon`.

Each server gets its own keys, config and free port under a tmp folder; nothing in ~/.ssh is
read or written (`ssh -F /dev/null`, explicit identity and known_hosts files).
"""

import dataclasses
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

SSHD = "/usr/sbin/sshd"


def free_port():
    """A port nothing listens on right now (another process could still take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def keygen(path, comment="tb-rsync-test"):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


@dataclasses.dataclass
class SshServer:
    host: str
    port: int
    folder: str
    client_key: str
    known_hosts: str
    log_path: str

    def command(self, key=None, known_hosts=None, strict="yes"):
        """An ssh command for this server; other keys or known_hosts test failures."""
        words = ["ssh", "-F", "/dev/null", "-p", str(self.port),
                 "-i", str(key or self.client_key), "-o", "IdentitiesOnly=yes",
                 "-o", "IdentityAgent=none",
                 "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                 "-o", "GlobalKnownHostsFile=/dev/null"]
        if strict:
            words += ["-o", f"StrictHostKeyChecking={strict}"]
        return shlex.join(words)

    @property
    def ssh_command(self):
        return self.command()

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


def start_sshd(folder, password_only=False, extra_config=()):
    """Start a real sshd under `folder` -> (process, SshServer); `stop(process)` ends it.
    `extra_config` lines are appended to its sshd_config. A plain function, so the
    benchmarks start the same server as the tests.
    """
    folder = pathlib.Path(folder)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    folder.mkdir(parents=True, exist_ok=True)
    host_key = keygen(folder / "host_key", "host")
    client_key = keygen(folder / "client_key")
    authorized = folder / "authorized_keys"
    authorized.write_text("" if password_only else (folder / "client_key.pub").read_text())
    port = free_port()
    host_pub = (folder / "host_key.pub").read_text().split()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "StrictModes no",
        "UsePAM no",
        f"PasswordAuthentication {'yes' if password_only else 'no'}",
        f"KbdInteractiveAuthentication {'yes' if password_only else 'no'}",
        f"PubkeyAuthentication {'no' if password_only else 'yes'}",
        "PermitRootLogin yes",
        "PermitEmptyPasswords no",
        "LogLevel VERBOSE",  # logs "Accepted publickey for": one line per login
        *extra_config,
        "",
    ]))
    log_path = folder / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for_port(port, proc)
    except RuntimeError:
        stop(proc)
        raise RuntimeError("sshd did not start:\n" + log_path.read_text(errors="replace"))
    return proc, SshServer("127.0.0.1", port, str(folder), str(client_key), str(known_hosts),
                           str(log_path))


def start_sshd_or_skip(folder, password_only=False, extra_config=()):
    """`start_sshd` for tests: skipped where OpenSSH is not installed."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("openssh-server/client are not installed")
    return start_sshd(folder, password_only, extra_config)


def exit_masters(folder):
    """Tell every ssh master with a socket under `folder` to exit."""
    for path in pathlib.Path(folder).glob("**/*"):
        if path.is_socket():
            subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={path}", "-O",
                            "exit", "x"], capture_output=True, timeout=10)


def remove_with_masters(folder):
    """`exit_masters`, then remove `folder`."""
    exit_masters(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def ssh_runtime_dir():
    """The session's own $XDG_RUNTIME_DIR, where tb-rsync puts its ssh control sockets (a
    short path: a unix socket's has 108 bytes at most), for every process the tests start."""
    folder = tempfile.mkdtemp(prefix="tbs-", dir="/tmp")
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = folder
    yield pathlib.Path(folder)
    if old is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = old
    remove_with_masters(folder)


@pytest.fixture(autouse=True)
def no_master_outlives_its_test(ssh_runtime_dir):
    """A finished `tb-rsync sync` leaves its shared login up for the next one (ControlPersist):
    end those after each test, so no test rides another's login or counts it."""
    yield
    exit_masters(ssh_runtime_dir)


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    """A real sshd on 127.0.0.1 accepting `.client_key` for the current user (root)."""
    proc, server = start_sshd_or_skip(tmp_path_factory.mktemp("sshd"))
    yield server
    stop(proc)


@pytest.fixture(scope="session")
def password_only_sshd(tmp_path_factory):
    """A real sshd that only offers password logins (which tb-rsync must never wait on)."""
    proc, server = start_sshd_or_skip(tmp_path_factory.mktemp("sshd-password"),
                                       password_only=True)
    yield server
    stop(proc)


@dataclasses.dataclass
class RsyncDaemon:
    host: str
    port: int
    module: str
    path: str

    def url(self, subdir=""):
        return f"rsync://{self.host}:{self.port}/{self.module}/{subdir}"


@pytest.fixture
def rsync_daemon(tmp_path):
    """A real `rsync --daemon` on 127.0.0.1 serving module `logs` from `.path` (read only)."""
    rsync = shutil.which("rsync")
    if rsync is None:
        pytest.skip("rsync is not installed")
    folder = tmp_path / "rsyncd"
    module = folder / "module"
    module.mkdir(parents=True)
    port = free_port()
    config = folder / "rsyncd.conf"
    config.write_text("\n".join([
        f"pid file = {folder / 'rsyncd.pid'}",
        "use chroot = no",
        "[logs]",
        f"    path = {module}",
        "    read only = yes",
        "    uid = root",
        "    gid = root",
        "",
    ]))
    log_path = folder / "rsyncd.log"
    proc = subprocess.Popen(
        [rsync, "--daemon", "--no-detach", f"--config={config}", "--address=127.0.0.1",
         f"--port={port}", f"--log-file={log_path}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_for_port(port, proc)
        yield RsyncDaemon("127.0.0.1", port, "logs", str(module))
    finally:
        stop(proc)


@pytest.fixture
def black_hole():
    """A TCP port on 127.0.0.1 that accepts connections and never says a word (a hung
    login node or daemon). Yields the port; every accepted socket stays open until the end."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    accepted, stopping = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stopping.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stopping.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()
