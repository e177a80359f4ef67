"""The images the CRI validation suite (critest, kubernetes-sigs/cri-tools pkg/validate)
pulls, built here from the busybox rootfs and served by a local registry on 127.0.0.1.

critest pulls registry.k8s.io/e2e-test-images/{busybox:1.29-2, nginx:1.14-2,
httpd:2.4.39-4, nonewprivs:1.3} and gcr.io/k8s-staging-cri-tools/test-image-* (tags,
digests, USER variants, hostnet-nginx-amd64). The runtimes under test map both
registries to the local one with their registry mirror settings, so the tests use the
real names. Stand-ins behave as far as the suite looks:
  busybox      Debian's static busybox rootfs, plus `pgrep` and `ipcs -m` (applets that
               build lacks and the suite runs) as small scripts
  nginx        /usr/sbin/nginx: a shell that writes /var/run/nginx.pid with its own pid,
               serves /www on :80 with busybox httpd and stays (so `pidof nginx` finds
               it); its argv carries "master process" as nginx's proctitle does
  httpd        says "httpd" on stderr, then busybox httpd on :80
  hostnet-nginx  busybox httpd on 127.0.0.1:12003 (host network: loopback only here)
  nonewprivs   a static setuid-root program printing "Effective uid: N"
  pause        (containerd's sandbox image) a static program named pause that waits
  test-image-* busybox with the USER or tags the suite expects; test-image-1/2/3 differ
               by one file so that their ids differ
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile

from ocitest import REPO
from registry import Layout, Registry, raw_manifest, skopeo_copy

E2E = "registry.k8s.io/e2e-test-images/"
CRI_TOOLS = "gcr.io/k8s-staging-cri-tools/"
BUSYBOX = E2E + "busybox:1.29-2"
NGINX = E2E + "nginx:1.14-2"
HTTPD = E2E + "httpd:2.4.39-4"
NONEWPRIVS = E2E + "nonewprivs:1.3"
HOSTNET_NGINX = CRI_TOOLS + "hostnet-nginx-amd64"
PAUSE = "registry.k8s.io/pause:3.6"  # containerd's sandbox image
MIRRORED = ("registry.k8s.io", "gcr.io")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PGREP = """#!/bin/sh
# pgrep NAME: pids whose command name is NAME (stand-in for the applet)
rc=1
for d in /proc/[0-9]*; do
    [ "$(cat $d/comm 2>/dev/null)" = "$1" ] && { echo "${d#/proc/}"; rc=0; }
done
exit $rc
"""
IPCS = """#!/bin/sh
# ipcs -m: the shared memory segments of this IPC namespace (stand-in for the applet)
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm | while read key shmid perms size rest; do
    printf "0x%08x %-10s %-10s %-10s %-10s\\n" "$key" "$shmid" root "$perms" "$size"
done
"""
NGINX_SCRIPT = """#!/bin/sh
# nginx stand-in: the pid file, a web server on :80, this shell stays as "nginx"
httpd -f -p 80 -h /www &
echo $$ > /var/run/nginx.pid
wait
"""
HTTPD_SCRIPT = """#!/bin/sh
echo "httpd: stand-in for httpd 2.4, serving /www on :80" >&2
exec httpd -f -p 80 -h /www
"""
NNP_C = '#include <stdio.h>\n#include <unistd.h>\nint main(void) {\n' \
        '  printf("Effective uid: %d\\n", (int)geteuid());\n  return 0;\n}\n'
# containerd's sandbox process: named "pause" as the real one (a sandbox whose process is
# called sleep would show in the suite's `pgrep sleep` of a pod-shared pid namespace)
PAUSE_C = '#include <signal.h>\n#include <unistd.h>\n#include <stdlib.h>\n' \
          'static void done(int s) { (void)s; exit(0); }\nint main(void) {\n' \
          '  signal(SIGTERM, done); signal(SIGINT, done);\n  for (;;) pause();\n}\n'


def _tar(entries: list[tuple[str, bytes | None, int, int]]) -> bytes:
    """A layer: (path, content or None for a directory, mode, uid)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data, mode, uid in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, 1700000000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _static_binary(workdir: str, name: str, source: str) -> bytes:
    src = os.path.join(workdir, name + ".c")
    out = os.path.join(workdir, name)
    with open(src, "w") as f:
        f.write(source)
    subprocess.run(["gcc", "-static", "-Os", "-o", out, src], check=True)
    with open(out, "rb") as f:
        return f.read()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ImageBuilder:
    """Images as busybox layer + extras layer (+ an optional own layer), config given."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.layout = Layout(os.path.join(workdir, "layout"))
        rootfs = os.path.join(workdir, "busybox.tar")
        subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", rootfs],
                       check=True, stdout=subprocess.DEVNULL)
        with open(rootfs, "rb") as f:
            base = f.read()
        extras = _tar([
            ("usr", None, 0o755, 0), ("usr/bin", None, 0o755, 0),
            ("usr/sbin", None, 0o755, 0), ("usr/local", None, 0o755, 0),
            ("usr/local/bin", None, 0o755, 0), ("var", None, 0o755, 0),
            ("var/run", None, 0o755, 0), ("www", None, 0o755, 0),
            ("usr/bin/pgrep", PGREP.encode(), 0o755, 0),
            ("usr/bin/ipcs", IPCS.encode(), 0o755, 0),
            ("usr/sbin/nginx", NGINX_SCRIPT.encode(), 0o755, 0),
            ("usr/local/bin/httpd-foreground", HTTPD_SCRIPT.encode(), 0o755, 0),
            ("usr/local/bin/nonewprivs", _static_binary(workdir, "nnp", NNP_C), 0o4755, 0),
            ("pause", _static_binary(workdir, "pause", PAUSE_C), 0o755, 0),
            ("www/index.html", b"<html><body>it works</body></html>\n", 0o644, 0),
        ])
        self.layers = [self._layer(base), self._layer(extras)]

    def _layer(self, raw: bytes) -> tuple[dict, str]:
        blob = gzip.compress(raw, mtime=0)
        desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": self.layout.blob(blob), "size": len(blob)}
        return desc, _digest(raw)

    def image(self, tag: str, config: dict, own: list | None = None) -> str:
        """Write the image into the layout under `tag`; its manifest digest. A tag in
        MULTI_ARCH gets an OCI image index (amd64 and arm64 entries, as the suite's real
        images are manifest lists)."""
        if tag in MULTI_ARCH:
            entries = []
            for arch in ("amd64", "arm64"):
                manifest, digest = self._manifest(config, own, arch)
                entries.append({"mediaType": manifest["mediaType"], "digest": digest,
                                "size": len(json.dumps(manifest, sort_keys=True)),
                                "platform": {"os": "linux", "architecture": arch}})
            index = {"schemaVersion": 2,
                     "mediaType": "application/vnd.oci.image.index.v1+json",
                     "manifests": entries}
            digest = self.layout.blob(json.dumps(index, sort_keys=True).encode())
            self.layout.tag(tag, digest, index["mediaType"])
            return digest
        manifest, digest = self._manifest(config, own, "amd64")
        self.layout.tag(tag, digest, manifest["mediaType"])
        return digest

    def _manifest(self, config: dict, own: list | None, arch: str) -> tuple[dict, str]:
        layers = list(self.layers)
        if own:
            layers.append(self._layer(_tar(own)))
        doc = {
            "created": "2024-01-01T00:00:00Z", "architecture": arch, "os": "linux",
            "config": {"Env": [DEFAULT_PATH], **config},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        }
        data = json.dumps(doc, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": self.layout.blob(data), "size": len(data)},
            "layers": [desc for desc, _ in layers],
        }
        return manifest, self.layout.blob(json.dumps(manifest, sort_keys=True).encode())


# served as multi-platform indexes (the real busybox:1.29-2 is a manifest list)
MULTI_ARCH = ("e2e-test-images/busybox:1.29-2", "k8s-staging-cri-tools/test-image-tag:all")


def image_specs() -> dict[str, tuple[dict, list | None]]:
    """repository path:tag (no registry) -> (image config, own layer entries)."""
    shell = {"Cmd": ["sh"]}
    passwd = (b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n"
              b"default-user:x:1000:1000::/home/default-user:/bin/sh\n"
              b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    group = (b"root:x:0:\nwww-data:x:33:\ndefault-user:x:1000:\n"
             b"group-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n")
    users = [("etc", None, 0o755, 0), ("etc/passwd", passwd, 0o644, 0),
             ("etc/group", group, 0o644, 0)]
    specs: dict[str, tuple[dict, list | None]] = {
        "e2e-test-images/busybox:1.29-2": (shell, None),
        "e2e-test-images/nginx:1.14-2": (
            {"Cmd": ["/usr/sbin/nginx", "master process", "-g", "daemon off;"],
             "ExposedPorts": {"80/tcp": {}}}, None),
        "e2e-test-images/httpd:2.4.39-4": ({"Cmd": ["httpd-foreground"]}, None),
        "e2e-test-images/nonewprivs:1.3": ({"Cmd": ["/usr/local/bin/nonewprivs"]}, None),
        "k8s-staging-cri-tools/hostnet-nginx-amd64:latest": (
            {"Cmd": ["httpd", "-f", "-p", "127.0.0.1:12003", "-h", "/www"]}, None),
        "pause:3.6": ({"Entrypoint": ["/pause"]}, None),
        "k8s-staging-cri-tools/test-image-latest:latest": (shell, None),
        "k8s-staging-cri-tools/test-image-tag:test": (shell, None),
        "k8s-staging-cri-tools/test-image-tag:all": (shell, None),
        "k8s-staging-cri-tools/test-image-digest:pushed": (
            shell, [("digest", b"pulled by digest\n", 0o644, 0)]),
        "k8s-staging-cri-tools/test-image-user-uid:latest": ({**shell, "User": "1002"}, users),
        "k8s-staging-cri-tools/test-image-user-username:latest": (
            {**shell, "User": "www-data"}, users),
        "k8s-staging-cri-tools/test-image-user-uid-group:latest": (
            {**shell, "User": "1003:1003"}, users),
        "k8s-staging-cri-tools/test-image-user-username-group:latest": (
            {**shell, "User": "www-data:www-data"}, users),
        "k8s-staging-cri-tools/test-image-predefined-group:latest": (
            {**shell, "User": "1000"}, users),
    }
    for i in (1, 2, 3):
        specs[f"k8s-staging-cri-tools/test-image-{i}:latest"] = (
            shell, [(f"image-{i}", f"{i}\n".encode(), 0o644, 0)])
        specs[f"k8s-staging-cri-tools/test-image-tags:{i}"] = (
            shell, [("image-tags", b"one image, three tags\n", 0o644, 0)])
    return specs


def registry_path(name: str) -> str:
    """'registry.k8s.io/e2e-test-images/busybox:1.29-2' -> 'e2e-test-images/busybox:1.29-2'
    (gcr.io's k8s-staging-cri-tools keeps its path)."""
    host, _, rest = name.partition("/")
    assert host in MIRRORED, name
    return rest


class LocalRegistry:
    """docker-registry on 127.0.0.1 holding every image of image_specs()."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.registry = Registry(workdir, os.path.join(workdir, "storage"), name="critest")
        self.digests: dict[str, str] = {}

    def start(self) -> LocalRegistry:
        self.registry.start()
        with tempfile.TemporaryDirectory(dir=self.workdir) as build:
            builder = ImageBuilder(build)
            for path, (config, own) in image_specs().items():
                builder.image(path, config, own)
            for path in image_specs():
                skopeo_copy(f"oci:{builder.layout.path}:{path}",
                            f"docker://{self.registry.host}/{path}",
                            *(["--all"] if path in MULTI_ARCH else []))
                repo, _, tag = path.rpartition(":")
                _, self.digests[path] = raw_manifest(self.registry, f"{repo}:{tag}")
        return self

    def stop(self) -> None:
        self.registry.stop()

    @property
    def host(self) -> str:
        return self.registry.host

    def digest_ref(self) -> str:
        """The name critest pulls by digest: test-image-digest@<its digest here>."""
        return CRI_TOOLS + "test-image-digest@" + \
            self.digests["k8s-staging-cri-tools/test-image-digest:pushed"]
