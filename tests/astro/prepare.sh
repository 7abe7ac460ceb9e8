#!/usr/bin/env bash
# Images for `make test-astro` (tests/astro/astro_checks.py), on a Debian machine as root: a Docker
# engine and the debootstrap base from tests/image/prepare.sh, then two images built on that base
# (no image registry is reachable here):
#   airflow-secrets-sidecar-astro-runtime   a stand-in for Astro Runtime 3.1 (runtime.Dockerfile)
#   airflow-secrets-sidecar-astro-postgres  the metadata database (postgres.Dockerfile)
# Each is tagged by a digest of its inputs, so a second run builds nothing, and also tagged :current,
# the name the test uses. Older digests of each are removed.
#
#   tests/astro/prepare.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
base=airflow-secrets-sidecar-base:bookworm
docker=/usr/bin/docker # Debian's client: its built-in BuildKit needs no buildx plugin
ca=/etc/ssl/certs/ca-certificates.crt # handed to pip as a build secret: PyPI is behind a TLS proxy here
say() { echo "prepare.sh: $*" >&2; }

"$here/../image/prepare.sh" "$base"

# build NAME DOCKERFILE INPUT...: build NAME:<digest of the base image, the Dockerfile, its inputs and
# the CA bundle> from this directory unless it exists, then tag it NAME:current.
build() {
    local name=$1 dockerfile=$2 digest ca_digest="" tag started log
    shift 2
    [[ -r $ca ]] && ca_digest="$(sha256sum <"$ca" | cut -c1-64)"
    digest="$(
        {
            "$docker" image inspect --format '{{.Id}}' "$base"
            echo "$ca_digest"
            cd "$here" && sha256sum "$dockerfile" "$@"
        } | sha256sum | cut -c1-12
    )"
    tag="$name:$digest"
    if "$docker" image inspect "$tag" >/dev/null 2>&1; then
        say "$tag: cached"
    else
        say "building $tag"
        local -a secret=()
        [[ -r $ca ]] && secret=(--secret "id=pip-ca,src=$ca")
        log="$(mktemp)"
        started=$SECONDS
        if ! DOCKER_BUILDKIT=1 "$docker" build --progress plain --network host "${secret[@]}" \
            --build-arg "BASE_IMAGE=$base" --build-arg "CA_SHA256=$ca_digest" \
            -f "$here/$dockerfile" -t "$tag" "$here" >"$log" 2>&1; then
            say "building $tag failed; the end of its output:"
            tail -n 40 "$log" >&2
            rm -f "$log"
            exit 1
        fi
        rm -f "$log"
        say "$tag: built in $((SECONDS - started))s"
    fi
    "$docker" tag "$tag" "$name:current"
    "$docker" image ls --format '{{.Repository}}:{{.Tag}}' "$name" | grep -v -e ":$digest\$" -e ':current$' |
        xargs -r "$docker" image rm >/dev/null || true
}

build airflow-secrets-sidecar-astro-runtime runtime.Dockerfile airflow-requirements.txt entrypoint
build airflow-secrets-sidecar-astro-postgres postgres.Dockerfile postgres-entrypoint.sh
