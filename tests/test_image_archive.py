"""Image archives: `load` of what real tools write (podman's docker-archive and oci-archive,
skopeo's and umoci's OCI layouts), `save` read back by podman and skopeo, `import` of a
rootfs tarball, and hostile archives refused with one line and nothing left in the store.

podman runs isolated (vfs storage, run root and tmpdir in a temporary directory, file
events and locks), as tests/test_podman.py does; it only imports and saves images here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest
import test_image_store
from clients import build_rootfs_tarball, remove_tree
from test_image_store import assert_store_empty, image_config, layer_tar, sha256, store_contents

from minirun.image import InvalidImage, archive
from minirun.image.store import ImageStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and layer owners need root"),
]

# the store fixtures, shared
tmp_root = test_image_store.tmp_root
store = test_image_store.store

needs = {tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")
         for tool in ("podman", "skopeo", "umoci")}

CONTAINERS_CONF = """\
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
"""


class Podman:
    """podman with everything in `base`, for image import, save and load."""

    def __init__(self, base: str) -> None:
        storage, runroot = os.path.join(base, "storage"), os.path.join(base, "run")
        conf, storage_conf = os.path.join(base, "containers.conf"), os.path.join(base,
                                                                                  "storage.conf")
        with open(conf, "w") as f:
            f.write(CONTAINERS_CONF)
        with open(storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{storage}"\n'
                    f'runroot = "{runroot}"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage_conf)
        self.cmd = ["podman", "--root", storage, "--runroot", runroot, "--storage-driver", "vfs",
                    "--tmpdir", os.path.join(base, "tmp"), "--events-backend", "file"]

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(self.cmd + list(args), capture_output=True, text=True,
                              env=self.env, timeout=120, check=False)
        assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr.strip()}"
        return proc.stdout


def run(*cmd: str, cwd: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr.strip()}"
    return proc.stdout


@pytest.fixture(scope="module")
def work():
    base = tempfile.mkdtemp(prefix="minirun-image-archive-")
    try:
        yield base
    finally:
        remove_tree(base)


@pytest.fixture(scope="module")
def rootfs_tar(work):
    return build_rootfs_tarball(work)


@pytest.fixture(scope="module")
def podman(work):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    base = os.path.join(work, "podman")
    os.mkdir(base)
    return Podman(base)


@pytest.fixture(scope="module")
def podman_archives(work, podman, rootfs_tar):
    """podman's docker-archive and oci-archive of a `podman import`ed busybox."""
    podman("import", rootfs_tar, "localhost/busybox:latest")
    docker_tar, oci_tar = os.path.join(work, "pm-docker.tar"), os.path.join(work, "pm-oci.tar")
    podman("save", "--format", "docker-archive", "-o", docker_tar, "localhost/busybox:latest")
    podman("save", "--format", "oci-archive", "-o", oci_tar, "localhost/busybox:latest")
    return docker_tar, oci_tar


def member_sha(tar_path: str, name: str) -> str:
    with tarfile.open(tar_path) as tar:
        return hashlib.sha256(tar.extractfile(name).read()).hexdigest()


def file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_busybox_rootfs(store: ImageStore, image: str, rootfs_tar: str) -> None:
    merged = store.snapshot(image, "check")
    try:
        assert file_sha(os.path.join(merged, "bin/busybox")) == \
            member_sha(rootfs_tar, "bin/busybox")
        assert os.stat(os.path.join(merged, "bin/sh")).st_ino == \
            os.stat(os.path.join(merged, "bin/busybox")).st_ino  # the tarball's hard links
        st = os.stat(os.path.join(merged, "home/app"))
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        with open(os.path.join(merged, "etc/passwd")) as f:
            assert f.read().startswith("root:x:0:0:")
    finally:
        store.release("check")


# --- real producers ------------------------------------------------------------------------

@needs["podman"]
def test_load_podman_docker_archive(store, podman_archives, rootfs_tar):
    docker_tar, _ = podman_archives
    (record,) = archive.load(store, docker_tar)
    assert record.names == ["localhost/busybox:latest"]
    assert record.manifest_digest is None
    assert record.diff_ids == ["sha256:" + file_sha(rootfs_tar)]
    assert store.get("localhost/busybox").id == record.id
    check_busybox_rootfs(store, "localhost/busybox", rootfs_tar)


@needs["podman"]
def test_load_podman_oci_archive_with_gzip_layers(store, podman_archives, rootfs_tar):
    docker_tar, oci_tar = podman_archives
    (record,) = archive.load(store, oci_tar)
    assert record.names == ["localhost/busybox:latest"]
    assert record.layers[0]["media_type"].endswith("+gzip")
    with tarfile.open(oci_tar) as tar:
        index = json.load(tar.extractfile("index.json"))
    assert record.manifest_digest == index["manifests"][0]["digest"]
    check_busybox_rootfs(store, record.id, rootfs_tar)
    # the same config as the docker archive: the same image, now with its manifest
    (again,) = archive.load(store, docker_tar)
    assert again.id == record.id and again.manifest_digest == record.manifest_digest


@needs["podman"]
def test_docker_archive_image_saved_and_loaded_again(store, tmp_root, podman_archives):
    """No manifest recorded (docker-save has none): save writes one for it."""
    docker_tar, _ = podman_archives
    (record,) = archive.load(store, docker_tar)
    out = os.path.join(tmp_root, "again.tar")
    archive.save(store, [record.id, "localhost/busybox"], out)
    other = ImageStore(os.path.join(tmp_root, "other"))
    try:
        (loaded,) = archive.load(other, out)
        assert (loaded.id, loaded.names) == (record.id, ["localhost/busybox:latest"])
        assert loaded.manifest_digest is not None
    finally:
        other.close()


@needs["podman"]
@needs["skopeo"]
def test_load_skopeo_oci_archive(store, work, podman_archives, rootfs_tar):
    docker_tar, _ = podman_archives
    out = os.path.join(work, "skopeo-oci.tar")
    run("skopeo", "copy", f"docker-archive:{docker_tar}", f"oci-archive:{out}:busybox:1.36")
    (record,) = archive.load(store, out)
    assert record.names == ["docker.io/library/busybox:1.36"]
    check_busybox_rootfs(store, "busybox:1.36", rootfs_tar)


@needs["umoci"]
def test_load_umoci_layout_with_whiteouts(store, work, rootfs_tar):
    layout, bundle = os.path.join(work, "umoci-layout"), os.path.join(work, "umoci-bundle")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:latest")
    run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    run("tar", "-C", os.path.join(bundle, "rootfs"), "-xf", rootfs_tar)
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:latest", bundle)
    os.unlink(os.path.join(bundle, "rootfs/bin/ls"))
    shutil.rmtree(os.path.join(bundle, "rootfs/home"))
    run("umoci", "repack", "--image", f"{layout}:latest", bundle)
    run("umoci", "config", "--image", f"{layout}:latest", "--config.cmd", "sh")
    out = os.path.join(work, "umoci.tar")
    run("tar", "-C", layout, "-cf", out, ".")

    (record,) = archive.load(store, out)
    assert record.names == []  # ref.name "latest" names no repository
    assert len(record.layers) == 2
    assert record.config["config"]["Cmd"] == ["sh"]
    merged = store.snapshot(record.id, "c1")
    try:
        assert os.path.exists(os.path.join(merged, "bin/cat"))
        assert not os.path.lexists(os.path.join(merged, "bin/ls"))
        assert not os.path.lexists(os.path.join(merged, "home"))
    finally:
        store.release("c1")


@needs["podman"]
@pytest.mark.parametrize("compress", ["gzip", "xz"])
def test_compressed_archive_from_a_pipe(store, tmp_root, podman_archives, compress):
    docker_tar, _ = podman_archives
    with open(docker_tar, "rb") as f:
        data = f.read()
    packed = os.path.join(tmp_root, "archive.packed")
    with open(packed, "wb") as f:
        f.write(gzip.compress(data) if compress == "gzip" else lzma.compress(data))
    proc = subprocess.Popen(["cat", packed], stdout=subprocess.PIPE)
    try:
        (record,) = archive.load(store, proc.stdout)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    assert record.names == ["localhost/busybox:latest"]
    assert store_contents(store.root)["tmp"] == []  # the spooled copy is gone


@needs["podman"]
@needs["skopeo"]
def test_save_is_read_by_podman_and_skopeo(store, work, podman, rootfs_tar):
    record = archive.import_rootfs(store, rootfs_tar, "saved:1", cmd=["sh"])
    store.tag("saved:1", "localhost:5000/team/saved:2")
    out = os.path.join(work, "minirun-saved.tar")
    archive.save(store, ["saved:1", "localhost:5000/team/saved:2"], out)

    loaded = podman("load", "-i", out)
    assert "saved:1" in loaded and "localhost:5000/team/saved:2" in loaded
    images = json.loads(podman("images", "--format", "json"))
    ids = {name: i["Id"] for i in images for name in i.get("Names") or []}
    assert ids["docker.io/library/saved:1"] == record.id.split(":")[1]
    assert ids["localhost:5000/team/saved:2"] == record.id.split(":")[1]

    inspected = json.loads(run("skopeo", "inspect", f"oci-archive:{out}:saved:1"))
    assert inspected["Layers"] == [record.layers[0]["digest"]]
    assert inspected["Digest"] == record.manifest_digest
    docker_view = json.loads(run("skopeo", "inspect", "--config", f"docker-archive:{out}"))
    assert docker_view["config"]["Cmd"] == ["sh"]


def test_save_then_load_keeps_id_manifest_and_names(store, tmp_root, rootfs_tar):
    record = archive.import_rootfs(store, rootfs_tar, "busybox:latest")
    out = os.path.join(tmp_root, "saved.tar")
    archive.save(store, ["busybox", record.id], out)
    other = ImageStore(os.path.join(tmp_root, "other"))
    try:
        (loaded,) = archive.load(other, out)
        assert (loaded.id, loaded.manifest_digest, loaded.names) == \
            (record.id, record.manifest_digest, ["docker.io/library/busybox:latest"])
        check_busybox_rootfs(other, "busybox", rootfs_tar)
    finally:
        other.close()


# --- import --------------------------------------------------------------------------------

def test_import_is_a_one_layer_image_with_a_stable_id(store, tmp_root, rootfs_tar):
    record = archive.import_rootfs(store, rootfs_tar, "busybox")
    assert record.names == ["docker.io/library/busybox:latest"]
    assert record.diff_ids == [record.layers[0]["digest"]]
    assert record.config["config"] == {"Env": [f"PATH={archive.DEFAULT_PATH}"]}  # docker: no Cmd
    assert record.config["os"] == "linux"
    with tarfile.open(rootfs_tar) as tar:
        newest = max(m.mtime for m in tar)
    assert record.created == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))
    # the same tarball, compressed this time: the same layer, config and id
    packed = os.path.join(tmp_root, "rootfs.tar.gz")
    with open(rootfs_tar, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    again = archive.import_rootfs(store, packed, "busybox")
    assert again.id == record.id and len(store.images()) == 1
    with_cmd = archive.import_rootfs(store, rootfs_tar, "busybox:sh", cmd=["sh"])
    assert with_cmd.config["config"]["Cmd"] == ["sh"] and with_cmd.id != record.id
    assert with_cmd.chain_ids == record.chain_ids  # one unpacked layer for both
    assert len(store_contents(store.root)["layers"]) == 1
    check_busybox_rootfs(store, "busybox", rootfs_tar)


@pytest.mark.parametrize("text, cmd", [('["sh", "-c", "echo hi"]', ["sh", "-c", "echo hi"]),
                                       ("sh -c 'echo hi'", ["sh", "-c", "echo hi"])])
def test_parse_cmd(text, cmd):
    assert archive.parse_cmd(text) == cmd


def test_import_refuses_what_is_not_a_tarball(store, tmp_root):
    bad = os.path.join(tmp_root, "bad.tar")
    with open(bad, "wb") as f:
        f.write(b"this is not a tar archive at all" * 40)
    with pytest.raises(InvalidImage, match="not a tar archive"):
        archive.import_rootfs(store, bad, "x")
    for broken in (b"\x1f\x8b\x08\x00" + b"garbage" * 100, lzma.compress(b"x" * 10000)[:-20],
                   b"BZh9" + b"garbage" * 100):
        with open(bad, "wb") as f:
            f.write(broken)
        with pytest.raises(InvalidImage, match="does not decompress"):
            archive.import_rootfs(store, bad, "x")
        with pytest.raises(InvalidImage, match="does not decompress"):
            archive.load(store, bad)
    assert_store_empty(store)


# --- hostile archives ----------------------------------------------------------------------

def _info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
          linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.linkname = kind, len(data), 0o644, linkname
    if kind != tarfile.REGTYPE:
        info.size = 0
    return info, data


def build_tar(members: list[tuple[tarfile.TarInfo, bytes]], gnu: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w",
                      format=tarfile.GNU_FORMAT if gnu else tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


GOOD_LAYER = layer_tar({"etc/": None, "etc/hostname": b"box\n", "bin/": None, "bin/x": b"x"})


def docker_members(layers=(GOOD_LAYER,), tags=("evil:latest",), config=None, manifest=None,
                   layer_paths=None) -> list[tuple[tarfile.TarInfo, bytes]]:
    """A docker-save archive (the classic layout) as members, to be tampered with."""
    config = config or image_config([sha256(x) for x in layers])
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    paths = layer_paths or [f"{sha256(x)[7:19]}/layer.tar" for x in layers]
    members = [_info(cfg_name, config)]
    members += [_info(p, x) for p, x in zip(paths, layers)]
    manifest = manifest if manifest is not None else json.dumps(
        [{"Config": cfg_name, "RepoTags": list(tags), "Layers": paths}]).encode()
    members.append(_info("manifest.json", manifest))
    return members


def oci_members(layers=(GOOD_LAYER,), name="evil:latest", media_type=archive.MEDIA_OCI_LAYER,
                tamper=None) -> list[tuple[tarfile.TarInfo, bytes]]:
    """An OCI layout archive as members; `tamper(blobs)` may change blobs by role."""
    config = image_config([sha256(x) for x in layers])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": archive.MEDIA_OCI_MANIFEST,
        "config": {"mediaType": archive.MEDIA_OCI_CONFIG, "digest": sha256(config),
                   "size": len(config)},
        "layers": [{"mediaType": media_type, "digest": sha256(x), "size": len(x)}
                   for x in layers],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": archive.MEDIA_OCI_MANIFEST, "digest": sha256(manifest),
        "size": len(manifest), "annotations": {archive.ANNOTATION_REF_NAME: name}}]}).encode()
    blobs = {"config": (sha256(config), config), "manifest": (sha256(manifest), manifest)}
    for i, x in enumerate(layers):
        blobs[f"layer{i}"] = (sha256(x), x)
    if tamper:
        tamper(blobs)
    members = [_info("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
               _info("index.json", index)]
    members += [_info(f"blobs/sha256/{d[7:]}", data) for d, data in blobs.values()
                if data is not None]
    return members


def _replace(role: str, data: bytes):
    def tamper(blobs):
        blobs[role] = (blobs[role][0], data)
    return tamper


def _drop(role: str):
    def tamper(blobs):
        blobs[role] = (blobs[role][0], None)
    return tamper


def _with(members, *extra):
    return list(members) + list(extra)


ESCAPING_LAYER = build_tar([_info("../../escaped-by-layer", b"pwned")])
_dev = tarfile.TarInfo("dev-node")
_dev.type, _dev.devmajor, _dev.devminor = tarfile.CHRTYPE, 1, 3
_big_pax = tarfile.TarInfo("x")
_big_pax.pax_headers = {"comment": "x" * (2 << 20)}

HOSTILE = {
    "member with ..": (_with(docker_members(), _info("../escaped", b"x")), "path with '..'"),
    "absolute member": (_with(docker_members(), _info("/abs/escaped", b"x")), "absolute path"),
    "layer path with ..": (docker_members(layer_paths=["../../etc/passwd"]), "path with '..'"),
    "absolute config path": (docker_members(manifest=json.dumps(
        [{"Config": "/etc/passwd", "RepoTags": [], "Layers": []}]).encode()), "absolute path"),
    "layer symlink to host file": (
        _with(docker_members(layer_paths=["l/layer.tar"])[:1] + docker_members(
            layer_paths=["l/layer.tar"])[2:],
            _info("l/layer.tar", kind=tarfile.SYMTYPE, linkname="/etc/passwd")),
        "symlink to absolute"),
    "layer symlink out of the archive": (
        _with(docker_members(layer_paths=["l/layer.tar"])[:1] + docker_members(
            layer_paths=["l/layer.tar"])[2:],
            _info("l/layer.tar", kind=tarfile.SYMTYPE, linkname="../../outside.tar")),
        "leaves the archive"),
    "device node": (_with(docker_members(), (_dev, b"")), "device node"),
    "duplicate member": (_with(docker_members(), _info("manifest.json", b"[]")), "appears twice"),
    "huge manifest.json": (docker_members(manifest=b"[" + b" " * (5 << 20) + b"]"),
                           "more than 4194304"),
    "huge pax header": (_with(docker_members(), (_big_pax, b"")), "header"),
    "missing layer file": (docker_members()[:1] + docker_members()[2:], "archive has no"),
    "diff_id mismatch": (docker_members(config=image_config([sha256(b"other")])),
                         "does not match the config's diff_id"),
    "layer escaping its root": (docker_members(layers=(ESCAPING_LAYER,)),
                                "member ../../escaped-by-layer"),
    "no manifest": ([_info("hello.txt", b"hi")], "not an image archive"),
    "manifest not a list": (docker_members(manifest=b'{"Config": "x"}'), "not a list"),
    "bad RepoTags": (docker_members(tags=("UPPER:case:x",)), "RepoTags"),
    "oci config digest mismatch": (oci_members(tamper=_replace("config", image_config(
        [sha256(GOOD_LAYER)], cmd=["evil"]))), "size differs|digest mismatch"),
    "oci config tampered, same size": (oci_members(tamper=_replace("config", image_config(
        [sha256(GOOD_LAYER)]).replace(b"amd64", b"arm64"))), "digest mismatch"),
    "oci layer digest mismatch": (oci_members(tamper=_replace("layer0", GOOD_LAYER[:-1] + b"\1")),
                                  "digest mismatch"),
    "oci missing manifest": (oci_members(tamper=_drop("manifest")), "missing from the archive"),
    "oci missing layer": (oci_members(tamper=_drop("layer0")), "missing from the archive"),
    "oci foreign layer": (oci_members(
        media_type="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
        "unsupported media type"),
    "oci huge index": (oci_members()[:1] + [_info("index.json", b" " * (5 << 20))],
                       "more than 4194304"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_leaves_nothing(store, tmp_root, case):
    members, message = HOSTILE[case]
    path = os.path.join(tmp_root, "hostile.tar")
    with open(path, "wb") as f:
        f.write(build_tar(members))
    with pytest.raises(InvalidImage, match=message) as err:
        archive.load(store, path)
    assert "\n" not in str(err.value)
    assert_store_empty(store)
    assert not os.path.exists(os.path.join(os.path.dirname(store.root), "escaped-by-layer"))
    assert not os.path.exists(os.path.join(store.root, "escaped-by-layer"))


def test_a_failed_load_keeps_nothing_of_its_good_images(store, tmp_root):
    good = docker_members(layers=(GOOD_LAYER,), tags=("good:1",))
    bad_layer = layer_tar({"y": b"y"})
    bad_cfg = image_config([sha256(b"not this layer")])
    bad_cfg_name = hashlib.sha256(bad_cfg).hexdigest() + ".json"
    manifest = json.loads(good[-1][1]) + [
        {"Config": bad_cfg_name, "RepoTags": ["bad:1"], "Layers": ["b/layer.tar"]}]
    members = good[:-1] + [_info(bad_cfg_name, bad_cfg), _info("b/layer.tar", bad_layer),
                           _info("manifest.json", json.dumps(manifest).encode())]
    path = os.path.join(tmp_root, "two.tar")
    with open(path, "wb") as f:
        f.write(build_tar(members))
    with pytest.raises(InvalidImage, match="diff_id"):
        archive.load(store, path)
    assert_store_empty(store)


def test_a_failed_load_does_not_touch_existing_images(store, tmp_root):
    path = os.path.join(tmp_root, "good.tar")
    with open(path, "wb") as f:
        f.write(build_tar(docker_members(tags=("good:1",))))
    (good,) = archive.load(store, path)
    before = store_contents(store.root)
    # shares the good image's layer, then fails on its own second layer
    evil = docker_members(layers=(GOOD_LAYER, ESCAPING_LAYER), tags=("good:1",))
    with open(path, "wb") as f:
        f.write(build_tar(evil))
    with pytest.raises(InvalidImage):
        archive.load(store, path)
    assert store_contents(store.root) == before
    assert store.get("good:1").id == good.id
    merged = store.snapshot("good:1", "c1")
    try:
        with open(os.path.join(merged, "etc/hostname")) as f:
            assert f.read() == "box\n"
    finally:
        store.release("c1")


def test_nested_indexes_are_bounded(store, tmp_root):
    members = oci_members()
    index = json.loads(members[1][1])
    blobs = {}
    for _ in range(6):
        data = json.dumps(index).encode()
        blobs[sha256(data)] = data
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": archive.MEDIA_OCI_INDEX, "digest": sha256(data), "size": len(data)}]}
    members = [members[0], _info("index.json", json.dumps(index).encode())] + members[2:] + \
        [_info(f"blobs/sha256/{d[7:]}", b) for d, b in blobs.items()]
    path = os.path.join(tmp_root, "deep.tar")
    with open(path, "wb") as f:
        f.write(build_tar(members))
    with pytest.raises(InvalidImage, match="nested more than"):
        archive.load(store, path)
    assert_store_empty(store)


def test_save_of_a_pulled_multi_platform_image_writes_its_own_manifest(store, tmp_root):
    """A pull records the index digest; the other platforms' manifests are not in the store,
    so save writes a manifest for the image instead of the index."""
    layer = layer_tar({"a": b"1"})
    layer_digest = store.put_blob(layer)
    config = image_config([layer_digest])
    config_digest = store.put_blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": archive.MEDIA_OCI_MANIFEST,
        "config": {"mediaType": archive.MEDIA_OCI_CONFIG, "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": archive.MEDIA_OCI_LAYER, "digest": layer_digest,
                    "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": archive.MEDIA_OCI_INDEX, "manifests": [
        {"mediaType": archive.MEDIA_OCI_MANIFEST, "digest": sha256(manifest),
         "size": len(manifest), "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": archive.MEDIA_OCI_MANIFEST, "digest": sha256(b"arm64 manifest"),
         "size": 14, "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
    index_digest = store.put_blob(index)
    store.add_image(index_digest, config_digest,
                    [{"digest": layer_digest, "media_type": archive.MEDIA_OCI_LAYER}], ["multi"])
    out = os.path.join(tmp_root, "multi.tar")
    archive.save(store, ["multi"], out)
    other = ImageStore(os.path.join(tmp_root, "other"))
    try:
        (loaded,) = archive.load(other, out)
        assert loaded.id == config_digest and loaded.names == ["docker.io/library/multi:latest"]
        assert loaded.manifest_digest not in (None, index_digest)
    finally:
        other.close()
