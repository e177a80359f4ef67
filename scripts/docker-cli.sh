#!/bin/bash
# The docker CLI from Debian's docker.io (20.10, API 1.41), without its daemon: the .deb is
# downloaded (never installed: its dockerd must not run on a minirun host) and only
# usr/bin/docker is extracted, into DIR (default /var/cache/minirun/docker-cli). Prints
# the CLI's path. For the Docker API tests (tests/dockerapitest.py) and scripts/install.sh.
#
#   scripts/docker-cli.sh [DIR]
set -euo pipefail

DIR=${1:-/var/cache/minirun/docker-cli}
CLI=$DIR/usr/bin/docker

if [ ! -x "$CLI" ]; then
    work=$(mktemp -d)
    trap 'rm -rf --one-file-system "$work"' EXIT
    (cd "$work" && apt-get download docker.io >/dev/null 2>&1) ||
        (apt-get update >/dev/null && cd "$work" && apt-get download docker.io >/dev/null) ||
        { echo "docker-cli: error: apt-get download docker.io failed" >&2; exit 1; }
    dpkg-deb --fsys-tarfile "$work"/docker.io_*.deb |
        tar -x -C "$work" ./usr/bin/docker
    mkdir -p "$DIR/usr/bin"
    mv "$work/usr/bin/docker" "$CLI.tmp"
    mv "$CLI.tmp" "$CLI"
fi
echo "$CLI"
