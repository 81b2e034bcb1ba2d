#!/usr/bin/env bash
# Fetch the scripts and styles of the GraphiQL page from the npm registry into
# merganser/schema/static/, so that merganser serves them itself: the page must
# work without access to any CDN. Versions are pinned; npm checks each package
# against the registry's integrity hash. Run again only to change a version
# (then check that merganser/schema/static/graphiql.html still works with it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GRAPHIQL_VERSION=3.8.3
REACT_VERSION=18.2.0
STATIC=merganser/schema/static

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch PACKAGE VERSION FILE...: copy FILEs (paths inside the package) and its licence.
fetch() {
    local package=$1 version=$2
    shift 2
    mkdir -p "$work/$package"
    (cd "$work/$package" && npm pack --silent "$package@$version" >/dev/null)
    tar -xzf "$work/$package"/*.tgz -C "$work/$package"
    for file in "$@"; do
        cp "$work/$package/package/$file" "$STATIC/$(basename "$file")"
    done
    cp "$work/$package/package/LICENSE" "$STATIC/LICENSE-$package"
    echo "$package $version" >>"$work/versions"
}

mkdir -p "$STATIC"
fetch graphiql "$GRAPHIQL_VERSION" graphiql.min.js graphiql.min.css
fetch react "$REACT_VERSION" umd/react.production.min.js
fetch react-dom "$REACT_VERSION" umd/react-dom.production.min.js
mv "$work/versions" "$STATIC/VERSIONS"
(cd "$STATIC" && sha256sum graphiql.min.js graphiql.min.css react.production.min.js react-dom.production.min.js)
