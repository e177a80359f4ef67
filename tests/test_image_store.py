"""The image store: verified blobs, records and names, layers unpacked once, overlay
snapshots shared between containers, rmi/prune, release that never deletes through a mount.

Real overlay mounts in a temporary root (root needed). The `store` fixture unmounts
anything left under its root (lazily) and removes it with --one-file-system, whatever the
test did. Helpers here (layer tarballs, images) are shared with test_image_archive.py and
test_image_cli.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile

import pytest
from clients import mounts_under, remove_tree

from minirun.errors import AlreadyExists, ContainerStateError, InvalidArgument, NotFound
from minirun.image import InvalidImage
from minirun.image.reference import parse_reference
from minirun.image.store import ImageStore, chain_ids

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and layer owners need root"),
]

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


# --- helpers -----------------------------------------------------------------------------

def layer_tar(files: dict[str, bytes | None], extra: list[tarfile.TarInfo] = ()) -> bytes:
    """A layer tarball: name -> content (None: a directory), then raw members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(diff_ids: list[str], cmd: list[str] | None = None) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/bin"], **({"Cmd": cmd} if cmd else {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()


def add_image(store: ImageStore, layers: list[bytes], names: list[str],
              cmd: list[str] | None = None):
    descs = []
    for data in layers:
        digest = store.put_blob(data)
        descs.append({"digest": digest, "media_type": LAYER_TAR, "size": len(data)})
    config = store.put_blob(image_config([d["digest"] for d in descs], cmd))
    return store.add_image(None, config, descs, names)


def store_contents(root: str) -> dict[str, list[str]]:
    """What is on disk: blobs, unpacked layers, temporary files and container dirs."""
    def ls(*parts: str) -> list[str]:
        path = os.path.join(root, *parts)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    return {"blobs": ls("blobs", "sha256"), "layers": ls("layers"), "tmp": ls("tmp"),
            "containers": ls("containers")}


def assert_store_empty(store: ImageStore) -> None:
    assert store.images() == []
    assert store_contents(store.root) == {"blobs": [], "layers": [], "tmp": [],
                                          "containers": []}


@pytest.fixture
def tmp_root():
    base = tempfile.mkdtemp(prefix="minirun-image-test-")
    try:
        yield base
    finally:
        remove_tree(base)  # lazy unmount of anything left under it, then rm --one-file-system
        assert not mounts_under(base)


@pytest.fixture
def store(tmp_root):
    s = ImageStore(os.path.join(tmp_root, "root"))
    try:
        yield s
    finally:
        s.close()


# --- references ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, full, familiar", [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3", "alpine:3"),
    ("localhost:5000/x/y:t", "localhost:5000/x/y:t", "localhost:5000/x/y:t"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
    ("localhost/busybox", "localhost/busybox:latest", "localhost/busybox:latest"),
    ("quay.io/a/b@sha256:" + "a" * 64, "quay.io/a/b@sha256:" + "a" * 64,
     "quay.io/a/b@sha256:" + "a" * 64),
])
def test_reference_normalization(text, full, familiar):
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar() == familiar


@pytest.mark.parametrize("text, why", [
    ("Busybox", "lowercase"), ("a" * 64, "image id"), ("x:", "bad tag"),
    ("x@sha256:12", "bad digest"), ("/x", "invalid reference format: /x$"),
    ("a//b", "invalid reference format: a//b$"), ("", "empty"),
])
def test_reference_refused(text, why):
    with pytest.raises(InvalidArgument, match=why):
        parse_reference(text)


def test_chain_ids_follow_the_oci_definition():
    a, b, c = (sha256(x) for x in (b"a", b"b", b"c"))
    ab = sha256(f"{a} {b}".encode())
    assert chain_ids([a, b, c]) == [a, ab, sha256(f"{ab} {c}".encode())]


# --- blobs -------------------------------------------------------------------------------

def test_put_blob_verifies_and_keeps_nothing_on_mismatch(store):
    data = b"hello blob"
    assert store.put_blob(io.BytesIO(data)) == sha256(data)
    assert store.put_blob(data, expected_digest=sha256(data)) == sha256(data)
    with store.open_blob(sha256(data)) as f:
        assert f.read() == data

    wrong = sha256(b"something else")
    with pytest.raises(InvalidImage, match=f"digest mismatch: expected {wrong}, got "
                                           f"{sha256(b'other')}"):
        store.put_blob(b"other", expected_digest=wrong)
    assert not store.has_blob(wrong) and not store.has_blob(sha256(b"other"))
    with pytest.raises(InvalidImage, match="larger than 4 bytes"):
        store.put_blob(b"12345", max_size=4)
    assert store_contents(store.root)["blobs"] == [sha256(data).split(":")[1]]


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64,
                                    "sha256:" + "a" * 63])
def test_bad_digests_never_become_paths(store, digest):
    with pytest.raises(InvalidImage, match="invalid"):
        store.blob_path(digest)
    with pytest.raises(InvalidImage, match="invalid"):
        store.put_blob(b"x", expected_digest=digest)


# --- records -----------------------------------------------------------------------------

def test_get_by_name_id_and_prefix_and_names_are_unique(store):
    one = add_image(store, [layer_tar({"a": b"1"})], ["app:1", "app:latest"])
    two = add_image(store, [layer_tar({"a": b"2"})], ["other"])
    assert store.get("app:1").id == one.id
    assert store.get("docker.io/library/app").id == one.id
    assert store.get(one.id).names == ["docker.io/library/app:1", "docker.io/library/app:latest"]
    assert store.get(one.short_id).id == one.id
    assert store.get(one.id.split(":")[1][:4]).id == one.id
    with pytest.raises(NotFound, match="no such image: app:2"):
        store.get("app:2")

    # a name moves: the old image keeps its other names
    store.tag("other", "app:latest")
    assert store.get("app:latest").id == two.id
    assert store.get(one.id).names == ["docker.io/library/app:1"]
    assert sorted(r.id for r in store.images()) == sorted([one.id, two.id])

    store.untag("app:1")
    assert store.get(one.id).names == []
    with pytest.raises(NotFound):
        store.untag("app:1")


def test_ambiguous_prefix_is_refused(store):
    image = add_image(store, [layer_tar({"a": b"1"})], [])
    hex_id = image.id.split(":")[1]
    twin = "sha256:" + hex_id[:6] + ("0" if hex_id[6] != "0" else "1") + "0" * 57
    with store._write() as db:  # a second id sharing 6 digits (unlikely to happen for real)
        db.execute("INSERT INTO images (id, layers, diff_ids, size, added) "
                   "VALUES (?, '[]', '[]', 0, 0)", (twin,))
    with pytest.raises(InvalidArgument, match=f"prefix {hex_id[:6]} is ambiguous"):
        store.get(hex_id[:6])
    assert store.get(hex_id[:7]).id == image.id
    with pytest.raises(NotFound):  # fewer than 4 digits is a name, not a prefix
        store.get(hex_id[:3])


def test_layer_not_matching_its_diff_id_is_refused_and_leaves_nothing(store):
    good, evil = layer_tar({"a": b"1"}), layer_tar({"a": b"2"})
    digest = store.put_blob(evil)
    config = store.put_blob(image_config([sha256(good)]))
    with pytest.raises(InvalidImage, match="does not match the config's diff_id"):
        store.add_image(None, config, [{"digest": digest, "media_type": LAYER_TAR}], ["x"])
    assert store.images() == []
    assert store_contents(store.root)["layers"] == []


def test_blobs_must_be_present(store):
    config = store.put_blob(image_config([sha256(b"nope")]))
    with pytest.raises(InvalidImage, match="is not in the store"):
        store.add_image(None, config, [{"digest": sha256(b"nope"), "media_type": LAYER_TAR}],
                        ["x"])
    assert store.images() == []


def test_layers_are_unpacked_once_and_shared_between_images(store):
    base = layer_tar({"bin/": None, "bin/tool": b"tool"})
    a = add_image(store, [base, layer_tar({"a": b"a"})], ["a"])
    b = add_image(store, [base, layer_tar({"b": b"b"})], ["b"])
    assert a.chain_ids[0] == b.chain_ids[0]
    # one directory for the shared base layer, one per top layer
    assert len(store_contents(store.root)["layers"]) == 3
    dirs_a, dirs_b = store.layer_dirs(a), store.layer_dirs(b)
    assert dirs_a[0] == dirs_b[0]
    assert os.stat(os.path.join(dirs_a[0], "bin/tool")).st_ino == \
        os.stat(os.path.join(dirs_b[0], "bin/tool")).st_ino
    assert a.size == len(base) + len(layer_tar({"a": b"a"}))


# --- snapshots ---------------------------------------------------------------------------

def test_snapshots_share_layers_and_keep_writes_apart(store):
    image = add_image(store, [layer_tar({"etc/": None, "etc/motd": b"hello\n"}),
                              layer_tar({"data": b"top"})], ["app"])
    m1 = store.snapshot("app", "c1")
    m2 = store.snapshot(image.id, "c2")
    try:
        assert m1 == os.path.join(store.root, "containers", "c1", "merged")
        assert os.path.ismount(m1) and os.path.ismount(m2)
        bottom = store.layer_dirs(image)[0]
        lower_ino = os.stat(os.path.join(bottom, "etc/motd")).st_ino
        # the same file of the same layer dir, not a copy
        assert os.stat(os.path.join(m1, "etc/motd")).st_ino == lower_ino
        assert os.stat(os.path.join(m2, "etc/motd")).st_ino == lower_ino
        with open(os.path.join(m1, "etc/motd")) as f:
            assert f.read() == "hello\n"
        assert os.listdir(os.path.join(store.root, "containers", "c1", "upper")) == []

        with open(os.path.join(m1, "new"), "w") as f:
            f.write("mine")
        os.unlink(os.path.join(m1, "data"))
        assert not os.path.exists(os.path.join(m2, "new"))
        assert os.path.exists(os.path.join(m2, "data"))
        upper1 = os.path.join(store.root, "containers", "c1", "upper")
        assert sorted(os.listdir(upper1)) == ["data", "new"]  # "data": the whiteout
        assert os.listdir(os.path.join(store.root, "containers", "c2", "upper")) == []
        assert os.path.exists(os.path.join(store.layer_dirs(image)[1], "data"))
        # the overlay's options name the shared dirs, top first
        with open("/proc/self/mountinfo") as f:
            line = next(x for x in f if f" {m1} " in x)
        lowers = line.split("lowerdir=")[1].split(",")[0].split(":")
        assert lowers == list(reversed(store.layer_dirs(image)))
        assert store.get("app").containers == ["c1", "c2"]
    finally:
        store.release("c1")
        store.release("c2")
    assert not mounts_under(store.root)
    assert store_contents(store.root)["containers"] == []
    assert store.get("app").containers == []


def test_snapshot_root_keeps_the_image_root_mode(store):
    root_dir = tarfile.TarInfo("./")
    root_dir.type, root_dir.mode = tarfile.DIRTYPE, 0o755
    add_image(store, [layer_tar({"x": b"1"}, [root_dir])], ["app"])
    merged = store.snapshot("app", "c1")
    try:
        assert oct(os.stat(merged).st_mode & 0o7777) == oct(0o755)
    finally:
        store.release("c1")


def test_whiteouts_of_an_upper_layer_hide_lower_files(store):
    wh = tarfile.TarInfo("etc/.wh.secret")
    opq = tarfile.TarInfo("var/.wh..wh..opq")
    image = add_image(store, [
        layer_tar({"etc/": None, "etc/secret": b"s", "etc/keep": b"k", "var/": None,
                   "var/old": b"o"}),
        layer_tar({"etc/": None, "var/": None, "var/new": b"n"}, [wh, opq]),
    ], ["app"])
    merged = store.snapshot(image, "c1")
    try:
        assert sorted(os.listdir(os.path.join(merged, "etc"))) == ["keep"]
        assert sorted(os.listdir(os.path.join(merged, "var"))) == ["new"]
    finally:
        store.release("c1")


def test_single_layer_image(store):
    add_image(store, [layer_tar({"only": b"1"})], ["one"])
    merged = store.snapshot("one", "c1")
    try:
        assert os.listdir(merged) == ["only"]
    finally:
        store.release("c1")


def test_many_layers_beyond_one_page_of_mount_options(store):
    # 60 layer paths of ~100 bytes: more than mount(2)'s one page of options
    layers = [layer_tar({f"f{i:02d}": str(i).encode()}) for i in range(60)]
    image = add_image(store, layers, ["tall"])
    assert len(":".join(store.layer_dirs(image))) > 4096
    merged = store.snapshot("tall", "c1")
    try:
        assert sorted(os.listdir(merged)) == [f"f{i:02d}" for i in range(60)]
    finally:
        store.release("c1")


def test_snapshot_ids_are_unique_and_checked(store):
    add_image(store, [layer_tar({"a": b"1"})], ["app"])
    store.snapshot("app", "c1")
    try:
        with pytest.raises(AlreadyExists):
            store.snapshot("app", "c1")
        for bad in ("../x", "a/b", "", ".hidden", "x" * 200):
            with pytest.raises(InvalidArgument):
                store.snapshot("app", bad)
    finally:
        store.release("c1")
    with pytest.raises(NotFound):
        store.snapshot("missing", "c2")
    assert store_contents(store.root)["containers"] == []
    assert store.get("app").containers == []


def test_release_refuses_to_delete_through_a_mount(store, tmp_root):
    add_image(store, [layer_tar({"a": b"1"})], ["app"])
    store.snapshot("app", "c1")
    host_dir = os.path.join(tmp_root, "host-data")
    os.mkdir(host_dir)
    with open(os.path.join(host_dir, "precious"), "w") as f:
        f.write("keep me")
    target = os.path.join(store.root, "containers", "c1", "upper", "bind")
    os.mkdir(target)
    subprocess.run(["mount", "--bind", host_dir, target], check=True)
    try:
        with pytest.raises(ContainerStateError, match="is mounted inside it"):
            store.release("c1")
        assert os.path.exists(os.path.join(host_dir, "precious"))
    finally:
        subprocess.run(["umount", "-l", target], check=False)
    store.release("c1")
    assert os.path.exists(os.path.join(host_dir, "precious"))
    assert store_contents(store.root)["containers"] == []


def test_release_detaches_a_busy_snapshot(store):
    add_image(store, [layer_tar({"a": b"content"})], ["app"])
    merged = store.snapshot("app", "c1")
    holder = subprocess.Popen(["sleep", "60"], cwd=merged)  # a cwd inside keeps it busy
    try:
        store.release("c1")
        assert not mounts_under(store.root)
        assert not os.path.exists(os.path.join(store.root, "containers", "c1"))
    finally:
        holder.kill()
        holder.wait()


def test_release_of_an_unknown_container_is_harmless(store):
    store.release("never-created")
    with pytest.raises(InvalidArgument):
        store.release("../../etc")


# --- rmi and prune -------------------------------------------------------------------------

def test_rmi_is_refused_while_a_snapshot_is_held(store):
    image = add_image(store, [layer_tar({"a": b"1"})], ["app"])
    store.snapshot("app", "c1")
    try:
        with pytest.raises(ContainerStateError, match="in use by container c1"):
            store.remove("app")
        assert store.get("app").id == image.id
        # forced: the name goes, the image and its layers stay for the container
        result = store.remove("app", force=True)
        assert result.untagged == ["docker.io/library/app:latest"] and result.deleted == []
        assert store.get(image.id).names == []
        assert os.path.isdir(store.layer_dirs(image)[0])
        assert store.prune(grace_seconds=0).images == []
    finally:
        store.release("c1")
    assert store.prune(grace_seconds=0).images == [image.id]
    assert_store_empty(store)


def test_rmi_untags_a_shared_name_and_deletes_the_last(store):
    image = add_image(store, [layer_tar({"a": b"1"})], ["app:1", "app:2"])
    other = add_image(store, [layer_tar({"a": b"1"}), layer_tar({"b": b"2"})], ["other"])
    with pytest.raises(InvalidArgument, match="several names"):
        store.remove(image.id)
    assert store.remove("app:1").untagged == ["docker.io/library/app:1"]
    result = store.remove("app:2")
    assert result.deleted == [image.id]
    # the shared bottom layer and its blob stay for `other`
    assert store.get("other").id == other.id
    assert os.path.isdir(store.layer_dirs(other)[0])
    assert store.has_blob(other.layers[0]["digest"])
    assert not store.has_blob(image.id)
    store.remove("other")
    assert_store_empty(store)


def test_prune_removes_unnamed_images_and_unreferenced_blobs(store):
    keep = add_image(store, [layer_tar({"k": b"1"})], ["keep"])
    dangling = add_image(store, [layer_tar({"d": b"1"})], [])
    orphan = store.put_blob(b"left by an interrupted pull")
    young = store.put_blob(b"a pull in progress")
    old = 1_000_000_000
    os.utime(store.blob_path(orphan), (old, old))
    result = store.prune()
    assert result.images == [dangling.id]
    assert orphan in result.blobs and young not in result.blobs
    assert store.has_blob(young) and not store.has_blob(orphan)
    assert result.reclaimed > 0
    assert [r.id for r in store.images()] == [keep.id]
    assert store.prune(grace_seconds=0).blobs == [young]
    result = store.prune(all_images=True, grace_seconds=0)
    assert result.images == [keep.id]
    assert_store_empty(store)


def test_prune_waits_for_a_lease(store):
    add_image(store, [layer_tar({"d": b"1"})], [])
    with store.lease():
        result = store.prune(grace_seconds=0)
    assert result.deferred and len(result.images) == 1
    assert store_contents(store.root)["layers"] != []  # left for the next prune
    assert not store.prune(grace_seconds=0).deferred
    assert_store_empty(store)


def test_records_survive_reopening(store):
    image = add_image(store, [layer_tar({"a": b"1"})], ["app"])
    again = ImageStore(store.root)
    try:
        assert again.get("app").id == image.id
        assert again.get("app").config["config"]["Env"] == ["PATH=/bin"]
    finally:
        again.close()


def test_root_with_overlay_separators_is_refused(tmp_root):
    with pytest.raises(InvalidArgument, match="not allowed"):
        ImageStore(os.path.join(tmp_root, "a,b"))
