#!/usr/bin/env bash
# What `make test-prometheus` runs against: Debian's prometheus package (the server and promtool).
# Installs it when missing on a Debian machine as root (CI is a fresh one), without starting the
# packaged service: the test runs its own server on a loopback port with a temporary config.
set -euo pipefail

say() { echo "prometheus prepare.sh: $*" >&2; }

command -v prometheus >/dev/null && command -v promtool >/dev/null && exit 0
if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
    say "needs prometheus and promtool: apt-get install prometheus as root, or put both on PATH"
    exit 1
fi
# A policy-rc.d that answers 101 keeps the package's postinst from starting the service (the
# convention invoke-rc.d and deb-systemd-invoke both follow); one already there is left alone.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
say "installing prometheus"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
