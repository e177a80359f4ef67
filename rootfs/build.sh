#!/bin/bash
# Build minirun's default root filesystem from Debian's static busybox, plus an example
# OCI bundle that runs it.
#
#   rootfs/build.sh [OUTDIR]      OUTDIR/rootfs/ and OUTDIR/bundle/ (default: rootfs/out)
#   rootfs/build.sh --tar FILE    a rootfs tarball (.tar, .tar.gz, .tar.xz) for `podman import`
#
# Every applet is a hard link to bin/busybox rather than a symlink: a container that masks
# /bin/ls (or any applet path) must not mask busybox itself. Re-running rebuilds from
# scratch; the old tree is only removed once findmnt shows nothing mounted under it.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=${BUSYBOX:-/bin/busybox}
PYTHON=${PYTHON:-/usr/bin/python3}
APP_UID=1000
APP_GID=1000

usage() {
    cat <<EOF
usage: rootfs/build.sh [OUTDIR]      OUTDIR/rootfs/ and OUTDIR/bundle/ (default: rootfs/out)
       rootfs/build.sh --tar FILE    a rootfs tarball (.tar, .tar.gz, .tar.xz)
EOF
}

die() {
    echo "rootfs/build.sh: $*" >&2
    exit 1
}

check_busybox() {
    [ -x "$BUSYBOX" ] || die "no $BUSYBOX: install it with 'apt-get install busybox-static'"
    # A dynamic busybox (Debian's plain 'busybox' package) would need the host's libc
    # inside the container.
    local out
    out=$(ldd "$BUSYBOX" 2>&1) || true
    case "$out" in
        *"not a dynamic executable"* | *"statically linked"*) ;;
        *) die "$BUSYBOX is dynamically linked: install 'busybox-static' instead of 'busybox'" ;;
    esac
}

# Refuse to delete a tree that has anything mounted in it: rm would recurse into the
# mount and delete the host's files (a leaked bind mount of / would be fatal).
check_no_mounts() {
    local dir=$1 target
    dir=$(realpath -m -- "$dir")
    local escaped=${dir// /\\x20}
    while IFS= read -r target; do
        if [ "$target" = "$escaped" ] || [ "${target#"$escaped"/}" != "$target" ]; then
            die "refusing to remove $dir: $target is mounted inside it (unmount it first)"
        fi
    done < <(findmnt -rn -o TARGET)
}

remove_tree() {
    local dir=$1
    [ -e "$dir" ] || [ -L "$dir" ] || return 0
    check_no_mounts "$dir"
    rm -rf --one-file-system -- "$dir"
}

populate_rootfs() {
    local root=$1 applet
    mkdir -p "$root"
    (
        cd "$root"
        mkdir -p bin sbin usr/bin usr/sbin etc proc sys dev tmp root home/app var run
        cp --preserve=timestamps "$BUSYBOX" bin/busybox
        chmod 0755 bin/busybox
        "$BUSYBOX" --list-full | while IFS= read -r applet; do
            case "$applet" in
                bin/busybox) ;;
                # linuxrc is the initrd entry point, meaningless in a container.
                */*) ln -f bin/busybox "$applet" ;;
            esac
        done
        [ -e bin/sh ] || ln bin/busybox bin/sh

        cat >etc/passwd <<EOF
root:x:0:0:root:/root:/bin/sh
app:x:$APP_UID:$APP_GID:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
        cat >etc/group <<EOF
root:x:0:
tty:x:5:
app:x:$APP_GID:
nogroup:x:65534:
EOF
        echo minirun >etc/hostname
        cat >etc/hosts <<EOF
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
        chmod 0644 etc/passwd etc/group etc/hostname etc/hosts
        chmod 0755 proc sys dev var run home home/app
        chmod 1777 tmp
        chmod 0700 root
    )
    # Same ownership whoever builds it; only root can chown, the tarball path below
    # records the same owners without needing root.
    if [ "$(id -u)" = 0 ]; then
        chown -R 0:0 "$root"
        chown "$APP_UID:$APP_GID" "$root/home/app"
    fi
}

# The config `runc spec` writes (minirun.spec.default_spec, the one definition of it), but
# not interactive and with a command that exits, so the bundle works as is:
# `minirun-oci run -b OUTDIR/bundle demo`.
write_config() {
    PYTHONPATH="$HERE/.." "$PYTHON" - "$1" <<'EOF'
import json
import sys

from minirun.spec import default_spec

config = default_spec()
config["process"]["terminal"] = False
config["process"]["args"] = ["/bin/echo", "hello from minirun"]
config["hostname"] = "minirun"
with open(sys.argv[1], "w") as f:
    json.dump(config, f, indent="\t")
    f.write("\n")
EOF
}

# Written with tarfile rather than GNU tar so that owners (root, app for /home/app),
# order and mtimes are the same for every build, whoever runs it.
write_tarball() {
    "$PYTHON" - "$1" "$2" "$APP_UID" "$APP_GID" <<'EOF'
import os
import sys
import tarfile

root, out, app_uid, app_gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mtime = int(os.environ.get("SOURCE_DATE_EPOCH", os.stat(os.path.join(root, "bin/busybox")).st_mtime))
mode = "w:gz" if out.endswith((".gz", ".tgz")) else "w:xz" if out.endswith(".xz") else "w"

def entries():
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield os.path.join(dirpath, name)

tmp = out + ".tmp"
with tarfile.open(tmp, mode, format=tarfile.GNU_FORMAT) as tar:
    for path in entries():
        rel = os.path.relpath(path, root)
        info = tar.gettarinfo(path, rel)
        if rel == "home/app":
            info.uid, info.gid, info.uname, info.gname = app_uid, app_gid, "app", "app"
        else:
            info.uid, info.gid, info.uname, info.gname = 0, 0, "root", "root"
        info.mtime = mtime
        if info.isreg():
            with open(path, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
os.replace(tmp, out)
EOF
}

build_dir() {
    local outdir=$1
    mkdir -p "$outdir"
    outdir=$(cd "$outdir" && pwd)
    # Build next to the old tree and swap, so a failed build leaves the last good one.
    check_no_mounts "$outdir"
    remove_tree "$outdir/rootfs.new"
    remove_tree "$outdir/bundle.new"
    echo "building $outdir/rootfs"
    populate_rootfs "$outdir/rootfs.new"
    echo "building $outdir/bundle"
    mkdir -p "$outdir/bundle.new"
    populate_rootfs "$outdir/bundle.new/rootfs"
    write_config "$outdir/bundle.new/config.json"
    remove_tree "$outdir/rootfs"
    remove_tree "$outdir/bundle"
    mv "$outdir/rootfs.new" "$outdir/rootfs"
    mv "$outdir/bundle.new" "$outdir/bundle"
    echo "done: try 'minirun-oci run -b $outdir/bundle demo'"
}

STAGE=""

build_tar() {
    local file=$1
    [ -d "$(dirname -- "$file")" ] || die "no directory for $file"
    STAGE=$(mktemp -d "${TMPDIR:-/tmp}/minirun-rootfs.XXXXXX")
    trap 'rm -rf --one-file-system -- "$STAGE"' EXIT
    populate_rootfs "$STAGE/rootfs"
    write_tarball "$STAGE/rootfs" "$file"
    echo "wrote $file"
}

main() {
    local tar_file="" outdir=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --tar)
                [ $# -ge 2 ] || die "--tar needs a file name"
                tar_file=$2
                shift 2
                ;;
            --tar=*) tar_file=${1#--tar=}; shift ;;
            -h | --help) usage; exit 0 ;;
            -*) die "unknown option $1 (see --help)" ;;
            *)
                [ -z "$outdir" ] || die "only one OUTDIR"
                outdir=$1
                shift
                ;;
        esac
    done
    [ -z "$tar_file" ] || [ -z "$outdir" ] || die "give either OUTDIR or --tar FILE"
    check_busybox
    [ -x "$PYTHON" ] || die "no $PYTHON: install python3"
    if [ -n "$tar_file" ]; then
        build_tar "$tar_file"
    else
        build_dir "${outdir:-$HERE/out}"
    fi
}

main "$@"
