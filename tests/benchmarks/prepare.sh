#!/usr/bin/env bash
# What `make bench` measures with: Debian's wrk (S3), valgrind (S3 counted) and nginx-light (the
# physical floor).
# Installs them when missing on a Debian machine as root (CI is a fresh one); elsewhere it says what
# is missing and the benchmarks skip those rows with the reason printed.
set -euo pipefail

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v callgrind_control >/dev/null || missing+=(valgrind)
((${#missing[@]})) || exit 0
if ((EUID == 0)) && command -v apt-get >/dev/null; then
    echo "bench prepare.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "bench prepare.sh: ${missing[*]} not installed (apt-get install ${missing[*]}): those rows are skipped" >&2
fi
