#!/usr/bin/env bash
# System packages tb-rsync's demo and tests need. Idempotent: installs only what is missing.
# Needs root or sudo.
#
#   scripts/install-system-deps.sh          for the tests: rsync (the transport), rclone (the
#                                           transport of rclone: sources, object storage),
#                                           openssh-server and openssh-client (tests start
#                                           their own sshd on 127.0.0.1), prometheus (the
#                                           metrics tests scrape with a real one), chromium
#                                           (the Sync tab's browser tests; not with
#                                           TB_RSYNC_NO_BROWSER=1), slurm-wlm and munge
#                                           (test-only: the discovery tests start a
#                                           one-node Slurm of their own)
#   scripts/install-system-deps.sh --demo   for the demo: rsync only (it syncs local folders
#                                           and uses no browser of its own)
set -euo pipefail
demo=0
case "${1:-}" in
  "") ;;
  --demo) demo=1 ;;
  *) echo "install-system-deps: unknown option '$1'; use --demo (for the demo) or nothing (for the tests)." >&2
     exit 2 ;;
esac
need=()
command -v rsync >/dev/null || need+=(rsync)
if [ "$demo" = 0 ]; then
  command -v rclone >/dev/null || need+=(rclone)
  command -v ssh >/dev/null || need+=(openssh-client)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh-keygen >/dev/null || need+=(openssh-client)
  command -v prometheus >/dev/null || need+=(prometheus)  # test-only: tests/test_metrics.py
  command -v squeue >/dev/null && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] \
    || need+=(slurm-wlm)
  [ -x /usr/sbin/munged ] || need+=(munge)
  if [ "${TB_RSYNC_NO_BROWSER:-0}" != 1 ]; then
    command -v chromium >/dev/null || need+=(chromium)
  fi
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "install-system-deps: everything needed is already installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-system-deps: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
