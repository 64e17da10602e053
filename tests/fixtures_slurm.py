"""A real Slurm on this machine: munged, slurmctld and slurmd from Debian's packages.

Everything lives in one tmp folder: munge's key, socket, pid and seed files; a slurm.conf on
free ports with state and spool folders of its own; every daemon's log. `SLURM_CONF` points
the Slurm commands (and the tb-rsync processes the tests start) at it. The one node is this
machine under its short host name; jobs run as the current user (root in CI).
"""

import dataclasses
import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.fixtures_servers import free_port, stop, wait_for_port

SBIN = "/usr/sbin"
NEEDED = ("munged", "mungekey", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


@dataclasses.dataclass
class Slurm:
    folder: str
    conf: str
    node: str  # the node's name: this machine's short host name
    env: dict  # os.environ with SLURM_CONF set

    def run(self, *args, check=True):
        """A Slurm command against this cluster -> stdout."""
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"{args} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def sbatch(self, *args):
        """Submit a job -> its id."""
        out = self.run("sbatch", "--parsable", *args)
        return out.strip().split(";")[0]

    def job_state(self, job):
        return self.run("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()

    def logs(self):
        text = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = os.path.join(self.folder, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text.append(f"--- {name}\n{f.read()[-4000:]}")
        return "\n".join(text)


def _wait(condition, what, procs, folder, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) while waiting "
                                   f"for {what}")
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"Slurm: no {what} after {timeout_s} s in {folder}")


def start_slurm(folder):
    """munged, slurmctld and slurmd under `folder` -> (processes, Slurm); stop each."""
    folder = str(folder)
    key, sock = os.path.join(folder, "munge.key"), os.path.join(folder, "munge.socket")
    subprocess.run([os.path.join(SBIN, "mungekey"), "--create", "--keyfile", key], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    procs = []
    try:
        procs.append(subprocess.Popen(
            # --force: munged wants every folder above its socket open to all (pytest's
            # tmp root is 0700); only root reaches it then, and every job here is root's.
            [os.path.join(SBIN, "munged"), "--foreground", "--force", "--key-file", key,
             "--socket", sock,
             "--pid-file", os.path.join(folder, "munged.pid"),
             "--log-file", os.path.join(folder, "munged.log"),
             "--seed-file", os.path.join(folder, "munged.seed")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        _wait(lambda: os.path.exists(sock), "munge socket", procs, folder)
        node = socket.gethostname().split(".")[0]
        ctld_port, slurmd_port = free_port(), free_port()
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        conf = os.path.join(folder, "slurm.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "ClusterName=tbrsync",
                f"SlurmctldHost={node}(127.0.0.1)",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={slurmd_port}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={folder}/state",
                f"SlurmdSpoolDir={folder}/spool",
                f"SlurmctldPidFile={folder}/slurmctld.pid",
                f"SlurmdPidFile={folder}/slurmd.pid",
                f"SlurmctldLogFile={folder}/slurmctld.log",
                f"SlurmdLogFile={folder}/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SchedulerType=sched/builtin",
                "MpiDefault=none",
                "ReturnToService=2",
                "JobCompType=jobcomp/none",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                f"NodeName={node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
                f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]))
        env = dict(os.environ, SLURM_CONF=conf)
        for daemon, port in (("slurmctld", ctld_port), ("slurmd", slurmd_port)):
            args = [os.path.join(SBIN, daemon), "-D", "-f", conf]
            if daemon == "slurmctld":
                args.append("-i")  # a fresh state folder: nothing to recover
            procs.append(subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            wait_for_port(port, procs[-1], timeout_s=30.0)
        slurm = Slurm(folder, conf, node, env)

        def node_up():
            state = slurm.run("sinfo", "-h", "-n", node, "-o", "%t", check=False).strip()
            return state in ("idle", "mix", "alloc")

        try:
            _wait(node_up, "idle node", procs, folder)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{slurm.logs()}") from None
        return procs, slurm
    except BaseException:
        stop_slurm(procs)
        raise


def stop_slurm(procs, slurm=None):
    """Cancel every job, then TERM the daemons (slurmd and slurmctld first, munged last)."""
    if slurm is not None:
        slurm.run("scancel", "--user", str(os.getuid()), check=False)
    for proc in reversed(procs):
        stop(proc)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster of this machine, for the session."""
    missing = [p for p in NEEDED if not os.path.exists(os.path.join(SBIN, p))] + \
        [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing); "
                    "scripts/install-system-deps.sh installs slurm-wlm and munge")
    procs, slurm = start_slurm(tmp_path_factory.mktemp("slurm"))
    yield slurm
    stop_slurm(procs, slurm)
