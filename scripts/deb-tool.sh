#!/bin/bash
# A program from a Debian package without installing the package: the .deb is downloaded
# (apt-get download: the host's apt sources, no dpkg state, no maintainer scripts, so no
# service is enabled or started) and only the named files are extracted, into
# DIR/<package>/ (default DIR: /var/cache/minirun/tools). Prints the first file's path.
# For test-only programs whose packages would start daemons on the host: Debian's docker.io
# (its dockerd must never run beside minirun) and prometheus (its prometheus.service and the
# recommended node exporter listen on every address).
#
#   scripts/deb-tool.sh PACKAGE FILE [FILE...]     e.g. prometheus usr/bin/promtool
#   MINIRUN_TOOLS_DIR=DIR scripts/deb-tool.sh ...
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: scripts/deb-tool.sh PACKAGE FILE [FILE...]" >&2; exit 2; }
PKG=$1
shift
DIR=${MINIRUN_TOOLS_DIR:-/var/cache/minirun/tools}/$PKG

missing=()
for file in "$@"; do
    [ -e "$DIR/$file" ] || missing+=("./$file")
done
if [ ${#missing[@]} -gt 0 ]; then
    work=$(mktemp -d)
    trap 'rm -rf --one-file-system "$work"' EXIT
    (cd "$work" && apt-get download -q "$PKG" >/dev/null 2>&1) ||
        (apt-get update >/dev/null 2>&1 && cd "$work" && apt-get download -q "$PKG" >/dev/null 2>&1) ||
        { echo "deb-tool: error: apt-get download $PKG failed" >&2; exit 1; }
    mkdir -p "$work/x"
    dpkg-deb --fsys-tarfile "$work"/"${PKG}"_*.deb | tar -x -C "$work/x" "${missing[@]}" ||
        { echo "deb-tool: error: $PKG has not ${missing[*]}" >&2; exit 1; }
    for file in "${missing[@]}"; do
        mkdir -p "$(dirname "$DIR/$file")"
        mv "$work/x/$file" "$DIR/$file.tmp"
        mv "$DIR/$file.tmp" "$DIR/$file"
    done
fi
echo "$DIR/$1"
