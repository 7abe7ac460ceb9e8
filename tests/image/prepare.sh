#!/usr/bin/env bash
# A Docker engine and a base image for `make test-image`, on a Debian machine as root (CI is a fresh
# one): installs docker.io, docker-compose and debootstrap if missing, starts dockerd if none answers, and builds
# the base image once with debootstrap (no registry is reachable here), cached by its tag.
#
#   tests/image/prepare.sh <base-image-tag>
set -euo pipefail

base_image="${1:?usage: prepare.sh BASE_IMAGE_TAG}"
docker=/usr/bin/docker # Debian's client: its built-in BuildKit needs no buildx plugin
dockerd_log=/var/log/airflow-secrets-sidecar-dockerd.log
say() { echo "prepare.sh: $*" >&2; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null ||
    [[ ! -x $docker ]]; then
    if ((EUID != 0)); then
        say "needs docker.io, docker-compose and debootstrap: run as root, or install them first"
        exit 1
    fi
    say "installing docker.io, docker-compose and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        docker.io docker-compose debootstrap >/dev/null
fi

# Wait for the engine's API, for at most $1 seconds.
wait_for_engine() {
    local deadline=$((SECONDS + $1))
    until "$docker" info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)) || ! kill -0 "$dockerd_pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.5
    done
}

if ! "$docker" info >/dev/null 2>&1; then
    say "starting dockerd (log: $dockerd_log)"
    nohup dockerd >"$dockerd_log" 2>&1 &
    dockerd_pid=$!
    if ! wait_for_engine 60; then
        # overlay2 needs a filesystem that supports it; vfs works anywhere, only slower.
        say "dockerd did not come up; retrying with --storage-driver vfs"
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
        nohup dockerd --storage-driver vfs >>"$dockerd_log" 2>&1 &
        dockerd_pid=$!
        if ! wait_for_engine 60; then
            say "dockerd did not start; the end of its log:"
            tail -n 20 "$dockerd_log" >&2
            exit 1
        fi
    fi
fi
"$docker" info --format 'engine {{.ServerVersion}}, storage driver {{.Driver}}' >&2

if "$docker" image inspect "$base_image" >/dev/null 2>&1; then
    say "base image $base_image: cached"
    exit 0
fi
# The mirror apt already uses (deb822 or one-line sources), else Debian's.
mirror="$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
mirror="${mirror:-$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}"
mirror="${mirror:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d /var/tmp/airflow-secrets-sidecar-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
say "building $base_image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "$docker" import --change 'CMD ["python3"]' - "$base_image" >/dev/null
say "base image $base_image: built"
