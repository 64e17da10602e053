"""rsync's failures as sentences: its stderr and exit code to one `TransferError` naming
the source and saying what to do (ssh's and the network's diagnoses come from ssh.py).
"""

import errno
import re
import signal

from tb_rsync_plugin.config import STAGING_FLAGS
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports import process as process_lib
from tb_rsync_plugin.transports.ssh import CONNECTION_DIAGNOSES, diagnose


def details(job):
    """The command, exit code and stderr of an rsync `job` (`TransferError.details`)."""
    return process_lib.details(job.args, job.proc.returncode, job.stderr)


_NO_REMOTE_RSYNC = "rsync is not installed on the remote host; install it there"
_NO_CONTAINER_RSYNC = ("rsync is not installed in the container; install it in the image "
                       "(for example 'apt-get install rsync' in its Dockerfile)")
# (stderr regex, what happened; what to do). The first match decides; ssh's and the
# network's come first.
DIAGNOSES = CONNECTION_DIAGNOSES + [
    ("Unknown module", "the rsync daemon has no such module; check the module name "
     "(list them with 'rsync rsync://HOST/')"),
    ("@ERROR: max connections", "the rsync daemon allows no more connections to this module "
     "(its 'max connections'); try again later or raise the limit"),
    ("@ERROR: auth failed", "the rsync daemon refused the login; tb-rsync cannot type a "
     "password, so use a module without auth or set RSYNC_PASSWORD"),
    ("No space left on device", "the disk holding the staging folder is full; free space "
     f"or choose another staging folder {STAGING_FLAGS}"),
    ("Disk quota exceeded", "the disk quota of the staging folder is exceeded; free space"),
    # EFBIG (a file-size limit such as 'ulimit -f', or the filesystem's largest file):
    # without this the user only read "rsync failed with exit code 11".
    ("File too large", "a staged file grew past the largest file allowed (the file-size "
     "limit 'ulimit -f' or the staging filesystem's maximum); raise the limit or choose "
     f"another staging folder {STAGING_FLAGS}"),
    # Before "command not found": rsync then adds "remote command not found (code 127)".
    ("tb-rsync: the remote shell '.*' could not be started", "the 'rsh' command could not be "
     "started (see the details); install it or fix 'rsh'"),
    ("command not found", _NO_REMOTE_RSYNC),
    ("rsync: not found", _NO_REMOTE_RSYNC),
    # docker and kubectl (OCI runtimes), podman (crun).
    (r'"rsync": executable file not found|executable file .rsync. not found', _NO_REMOTE_RSYNC),
    # A push (push.py) into an inbox folder that does not exist on the hub.
    (r'\[Receiver\] mkdir ".*" failed: No such file or directory', "the folder it goes into "
     "has no parent folder at the receiving end; create the inbox there first (mkdir -p) "
     "or fix the path"),
    ("timeout in data send/receive", "the connection stalled (no data for too long); "
     "check the network"),
    ("io timeout after", "the connection stalled (no data for too long); check the network"),
    ("connection unexpectedly closed", "the connection closed unexpectedly; check that "
     "'ssh HOST rsync --version' works"),
]


def temp_write_error(source, temp_dir, error):
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    return (f"Sync of '{source.name}' could not write its file list into '{temp_dir}' "
            f"({error.strerror}); " + ("free space on that disk or choose another staging "
                                       f"folder {STAGING_FLAGS}." if full else
                                       "check that the staging folder is writable."))


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def explain(source, job):
    """rsync's exit code and stderr to a TransferError sentence naming the source."""
    text = "\n".join(job.stderr)
    code = job.proc.returncode
    what = diagnose(text, DIAGNOSES)
    if what == _NO_REMOTE_RSYNC and source.rsh:
        what = _NO_CONTAINER_RSYNC
    if what is None and re.search(r'(change_dir|link_stat) ".*" failed: No such file', text):
        what = "there is no such directory at the source; check the path"
    if what is None and re.search(r'change_dir ".*" failed: Not a directory', text):
        what = "the source is a file, not a directory; name the folder that holds the runs"
    if what is None and "Permission denied" in text:
        what = "permission was denied reading the source or writing the staging folder"
    if what is None:
        what = {1: "rsync rejected its arguments", 2: "the rsync versions are incompatible",
                5: "the rsync daemon refused the session", 10: "the connection failed",
                12: "the connection to the source failed", 20: "rsync was killed",
                30: "the connection stalled", 35: "the rsync daemon did not answer in time",
                255: "ssh failed"}.get(code, f"rsync failed with exit code {code}")
        if code < 0:
            what = f"rsync was killed by signal {_signal_name(-code)}"
    return TransferError(f"Sync of '{source.name}' from '{source.source}' failed: {what}.",
                         details(job))
