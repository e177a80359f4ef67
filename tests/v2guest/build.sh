#!/bin/bash
# Build the kernel and initramfs of the cgroup v2 test guest into tests/v2guest/cache/.
#
# Idempotent: each step is skipped when its stamp matches its inputs, so a cached run costs
# a few milliseconds. Needs (Debian 12): apt, dpkg-deb, xz-utils, busybox-static, grep;
# network access to the Debian mirror only for the first download.
#
# Outputs: cache/vmlinux (ELF, booted with qemu -kernel), cache/initramfs.cpio,
# cache/kernel.release. Override the kernel package with MINIRUN_V2GUEST_KERNEL_PKG.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=$here/cache
busybox=${MINIRUN_V2GUEST_BUSYBOX:-/bin/busybox}
# Load order: every module's dependencies come before it (checked below).
modules="virtio_pci_legacy_dev virtio_pci_modern_dev virtio_ring virtio virtio_pci \
9pnet 9pnet_virtio netfs fscache 9p overlay virtio_blk"

log() { echo "v2guest build: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$cache"
# Two test runs may build at once; the second waits and then finds everything cached.
exec 9>"$cache/.lock"
flock 9

[ -x "$busybox" ] || die "$busybox not found (apt-get install busybox-static)"
"$busybox" --list | grep -x cpio >/dev/null || die "$busybox has no cpio applet"
command -v xz >/dev/null || die "xz not found (apt-get install xz-utils)"

# The kernel package the linux-image-amd64 metapackage points at (local apt metadata).
pkg=${MINIRUN_V2GUEST_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')}
deb=""
if [ -n "$pkg" ]; then
    deb=$(ls "$cache/${pkg}_"*.deb 2>/dev/null | tail -n1 || true)
    if [ -z "$deb" ]; then
        log "downloading $pkg"
        rm -rf "$cache/download"
        mkdir "$cache/download"
        # _apt cannot write here; apt then downloads as root and says so on stderr.
        (cd "$cache/download" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
            true
        newdeb=$(ls "$cache/download/${pkg}_"*.deb 2>/dev/null | sed -n 1p || true)
        [ -n "$newdeb" ] || die "apt-get download $pkg failed"
        rm -f "$cache"/linux-image-*.deb
        mv "$newdeb" "$cache/"
        rmdir "$cache/download"
        deb=$cache/$(basename "$newdeb")
    fi
else
    # No apt metadata (apt-get update never ran, or offline): reuse a cached package.
    deb=$(ls "$cache"/linux-image-*.deb 2>/dev/null | tail -n1 || true)
    [ -n "$deb" ] || die "cannot resolve linux-image-amd64 (run apt-get update)"
fi

init_sum=$(sha256sum "$here/init" "$here/build.sh" "$busybox" | sha256sum | cut -c1-16)
kernel_stamp=$(basename "$deb")
initramfs_stamp="$kernel_stamp $init_sum"

if [ -f "$cache/vmlinux" ] && [ -f "$cache/initramfs.cpio" ] && [ -f "$cache/kernel.release" ] &&
    [ "$(cat "$cache/vmlinux.stamp" 2>/dev/null)" = "$kernel_stamp" ] &&
    [ "$(cat "$cache/initramfs.stamp" 2>/dev/null)" = "$initramfs_stamp" ]; then
    exit 0
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT

log "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$work/pkg"
vmlinuz=$(ls "$work"/pkg/boot/vmlinuz-* | sed -n 1p)
release=${vmlinuz##*/vmlinuz-}
moddir=$work/pkg/lib/modules/$release
[ -d "$moddir" ] || die "no modules for $release in $(basename "$deb")"

if [ "$(cat "$cache/vmlinux.stamp" 2>/dev/null)" != "$kernel_stamp" ] || [ ! -f "$cache/vmlinux" ]; then
    # QEMU boots an ELF vmlinux directly (PVH); the bzImage holds it as an xz stream
    # after the setup code, as scripts/extract-vmlinux in the kernel tree finds it.
    offset=$(grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1 | sed -n 1p)
    [ -n "$offset" ] || die "no xz stream in $vmlinuz"
    tail -c +$((offset + 1)) "$vmlinuz" >"$work/vmlinux.xz"
    xz -dc --single-stream "$work/vmlinux.xz" >"$work/vmlinux"
    [ "$(head -c4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
        die "decompressed kernel is not an ELF file"
    mv "$work/vmlinux" "$cache/vmlinux"
    echo "$kernel_stamp" >"$cache/vmlinux.stamp"
fi

log "building initramfs for $release"
root=$work/initramfs
mkdir -p "$root"/{bin,dev,proc,sys,mnt/host,mnt/rw,mnt/share,newroot,lib/modules}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
n=10
loaded=" "
for m in $modules; do
    ko=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" | sed -n 1p)
    [ -n "$ko" ] || die "module $m not found in $release"
    out=$root/lib/modules/$n-$m.ko
    case $ko in
    *.xz) xz -dc "$ko" >"$out" ;;
    *) cp "$ko" "$out" ;;
    esac
    deps=$(grep -aoE 'depends=[A-Za-z0-9_,-]*' "$out" | sed -n '1s/^depends=//p' | tr , ' ')
    for d in $deps; do
        case $loaded in *" $d "*) ;; *) die "module $m needs $d, which is not loaded before it" ;; esac
    done
    loaded="$loaded$m "
    n=$((n + 1))
done
(cd "$root" && find . -mindepth 1 | sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$work/initramfs.cpio"
mv "$work/initramfs.cpio" "$cache/initramfs.cpio"
echo "$release" >"$cache/kernel.release"
echo "$initramfs_stamp" >"$cache/initramfs.stamp"
log "done: $cache/vmlinux $cache/initramfs.cpio ($release)"
