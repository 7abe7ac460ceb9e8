#!/usr/bin/env bash
# systemd-analyze for tests/test_systemd.py, which fails without it: Debian's `systemd` package,
# installed as root (CI). Installing it starts nothing. Elsewhere, install systemd yourself.
set -euo pipefail

if command -v systemd-analyze >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "systemd prepare.sh: no systemd-analyze; install your distribution's systemd package" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
systemd-analyze --version | head -n 1
