#!/usr/bin/env bash
# System packages the end-to-end tests drive: Debian's Chromium (dashboard browser tests through Playwright;
# Playwright's own browser download is not used), an OpenSSH server and rsync (the `ray up` / `ray submit`
# cluster-launcher test reaches 127.0.0.1 over SSH), openssl (the Flower deployment test's TLS certificates). Installed with apt-get when missing and running as root;
# otherwise the missing ones are named and the script exits non-zero.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages for the end-to-end tests: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "the end-to-end tests need these system packages: ${need[*]} (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
