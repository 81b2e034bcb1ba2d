#!/usr/bin/env bash
# Build FerretDB (a MongoDB-compatible server over SQLite) for the test suite,
# unless it is already built, and print the binary's path on stdout.
#
# The binary goes to $REPO/.tools/ferretdb-v1.24.2 (.tools/ is git-ignored).
# `go install ...@v1.24.2` is tried first; where it fails (a proxy that refuses
# the module's version list, or a binary that panics because the module zip
# lacks build/version/version.txt) the module source is downloaded, patched
# with that file and built.
#
# FerretDB v1.24.2 needs Go >= 1.24 (its go.mod says "go 1.24"). An older Go
# from 1.21 on is told to fetch that toolchain itself (GOTOOLCHAIN); one older
# than 1.21 cannot, and the script stops saying which Go to install.
#
# Progress goes to stderr; stdout carries only the path.
set -euo pipefail

VERSION=v1.24.2
MODULE=github.com/FerretDB/FerretDB
GO_NEEDED=1.24
TOOLCHAIN=go1.24.3
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$REPO/.tools/ferretdb-$VERSION

log() { echo "ferretdb.sh: $*" >&2; }

works() { [[ -x $1 ]] && "$1" --version >/dev/null 2>&1; }

if works "$BIN"; then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { log "go is not installed; FerretDB $VERSION needs Go >= $GO_NEEDED to build"; exit 1; }

# `go env GOVERSION` says e.g. go1.22.5 (or "devel go1.25-..."); Go before 1.16 has no such variable.
go_version=$(go env GOVERSION 2>/dev/null || true)
[[ $go_version =~ go([0-9]+)\.([0-9]+) ]] || go_version=$(go version)
if [[ ! $go_version =~ go([0-9]+)\.([0-9]+) ]]; then
    log "cannot tell which Go '$(command -v go)' is ($go_version); FerretDB $VERSION needs Go >= $GO_NEEDED"
    exit 1
fi
go_major=${BASH_REMATCH[1]} go_minor=${BASH_REMATCH[2]}
go_version="Go $go_major.$go_minor"
if ((go_major == 1 && go_minor < ${GO_NEEDED#1.})); then
    if ((go_minor >= 21)); then
        log "$go_version is older than the Go >= $GO_NEEDED FerretDB $VERSION needs; using GOTOOLCHAIN=$TOOLCHAIN+auto"
        log "(go fetches that toolchain through the module proxy; if it cannot, install Go >= $GO_NEEDED)"
        export GOTOOLCHAIN=$TOOLCHAIN+auto
    else
        log "FerretDB $VERSION needs Go >= $GO_NEEDED (its go.mod says go 1.24); $go_version is too old to fetch"
        log "a newer toolchain itself (that takes Go >= 1.21): install Go >= $GO_NEEDED and run this again"
        exit 1
    fi
fi
mkdir -p "$REPO/.tools"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferretdb-build.XXXXXX")
trap 'chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# 1. The simple way.
log "trying go install $MODULE/cmd/ferretdb@$VERSION"
if GOBIN=$WORK/bin go install "$MODULE/cmd/ferretdb@$VERSION" >&2 && works "$WORK/bin/ferretdb"; then
    mv "$WORK/bin/ferretdb" "$BIN"
    log "installed with go install"
    echo "$BIN"
    exit 0
fi
log "go install did not give a working binary; building from the module source"

# 2. Download the module source through a scratch module and build a patched copy.
mkdir -p "$WORK/scratch"
cat >"$WORK/scratch/go.mod" <<EOF
module x

go 1.22

require $MODULE $VERSION
EOF
DIR=$(cd "$WORK/scratch" && GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
[[ -d $DIR ]] || { log "go mod download gave no source directory"; exit 1; }

cp -R "$DIR" "$WORK/src"
chmod -R u+w "$WORK/src"
mkdir -p "$WORK/src/build/version"
echo "$VERSION" >"$WORK/src/build/version/version.txt"
log "building in $WORK/src (takes about a minute)"
(cd "$WORK/src" && GOFLAGS=-mod=mod go build -o "$WORK/bin/ferretdb" ./cmd/ferretdb) >&2

works "$WORK/bin/ferretdb" || { log "the built binary does not run"; exit 1; }
mv "$WORK/bin/ferretdb" "$BIN"
log "built $BIN"
echo "$BIN"
