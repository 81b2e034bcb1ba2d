#!/usr/bin/env bash
# Install everything the test suite needs, then run it.
#
# Python packages come from PyPI (the project with its "test" extra); FerretDB,
# the MongoDB-wire server the MongoDB backend is tested against, is built with
# Go by scripts/ferretdb.sh (once; later runs reuse the binary in .tools/);
# Redis (for the multi-server update relay) and Chromium (for the browser
# tests) come from Debian's packages, installed only when missing.
# Installing them takes root: run as root, or with sudo available.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k "not mongodb" -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]})); then
    sudo=()
    if [[ $(id -u) != 0 ]]; then
        if ! command -v sudo >/dev/null; then
            echo "scripts/test.sh: Debian packages ${missing[*]} are missing, and installing them takes root:" >&2
            echo "  run this as root, install sudo, or install them first: apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    # Through env: sudo may not pass the caller's environment on.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]'
scripts/ferretdb.sh >/dev/null
exec python3 -m pytest "$@"
