"""The `--rsh` that rsync gets for a source with `rsh` (a pod or container, not an ssh host).

rsync starts its remote shell as `RSH HOST rsync --server ...`: fine for `docker exec -i`
(HOST is the container), wrong for `kubectl exec -i POD --`, where the pod must come before
`--` and would otherwise be run as the command. So rsync is handed this file as its remote
shell, with the user's words: it puts rsync's HOST where the words say `{host}` (or after
the last word, as rsync itself would, when none does) and execs the result, so the remote
rsync talks straight to ours. None of ssh's options (BatchMode, timeouts) are added: they
mean nothing to kubectl or docker.

Run as `python -S remote_shell.py N WORD1 .. WORDN HOST COMMAND...`. It imports nothing
from tb_rsync_plugin and starts without site-packages: it runs once per rsync process.
"""

import os
import shlex
import sys

HOST = "{host}"  # config.RSH_HOST; not imported, see above


def rsh_command(rsh):
    """rsync's `--rsh` value for the user's `rsh` command (rsync splits it like a shell)."""
    words = shlex.split(rsh)
    return shlex.join([sys.executable, "-S", os.path.abspath(__file__), str(len(words)),
                       *words])


def command(words, host, rest):
    """The user's words with rsync's HOST in place, then rsync's command."""
    if any(HOST in word for word in words):
        words = [word.replace(HOST, host) for word in words]
    else:
        words = words + [host]
    return words + rest


def main(argv):
    count = int(argv[0])
    words, host, rest = argv[1:1 + count], argv[1 + count], argv[2 + count:]
    args = command(words, host, rest)
    try:
        os.execvp(args[0], args)
    except OSError as e:
        # rsync would only say "connection unexpectedly closed"; rsync_errors.DIAGNOSES reads this.
        sys.stderr.write(f"tb-rsync: the remote shell '{args[0]}' could not be started "
                         f"({e.strerror}).\n")
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
