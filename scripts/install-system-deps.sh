#!/usr/bin/env bash
# System packages tb-rsync's demo and tests need: rsync (the transport), rclone (the transport
# of rclone: sources, object storage), openssh-server and openssh-client (tests start their own
# sshd on 127.0.0.1), chromium (the Sync tab's browser tests). Idempotent: installs only what
# is missing. Needs root or sudo.
set -euo pipefail
need=()
command -v rsync >/dev/null || need+=(rsync)
command -v rclone >/dev/null || need+=(rclone)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if [ "${TB_RSYNC_NO_BROWSER:-0}" != 1 ]; then
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "install-system-deps: rsync, rclone, ssh, sshd and chromium are already installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-system-deps: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
