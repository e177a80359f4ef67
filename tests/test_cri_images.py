"""The CRI ImageService through gRPC: `minirun cri` on temporary roots and socket, pulling
from a real registry (Debian's docker-registry on 127.0.0.1, as tests/test_image_pull.py),
one instance open, one behind htpasswd basic auth and one behind bearer tokens from the
token server in tests/registry.py (which also answers docker's OAuth2 refresh-token POST).
Images are built here as OCI layouts and pushed with skopeo; skopeo's view of the registry
(the manifest digest) is the witness for repo_digests.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from dataclasses import dataclass

import grpc
import pytest
from crienv import CriImagesEnv
from ocitest import REPO
from registry import (
    FaultProxy,
    Layout,
    Registry,
    TokenServer,
    htpasswd_line,
    raw_manifest,
    skopeo_copy,
)

from minirun.cri.api import api_pb2 as pb
from minirun.cri.api import api_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the CRI server and layer unpacking need root"),
]

USERS = {"alice": "wonderland"}
REFRESH_TOKEN = "refresh-token-of-alice"


@dataclass
class Env:
    reg: Registry
    basic: Registry
    token_reg: Registry
    tokens: TokenServer
    app_digest: str  # manifest digest of app:v1 as skopeo sees it
    app_config: str  # its config digest: the image id
    named_config: str


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("registry"))
    storage = os.path.join(workdir, "storage")
    started: list = []
    try:
        reg = Registry(workdir, storage, name="open").start()
        started.append(reg)
        layout = Layout(os.path.join(workdir, "layout"))
        app = layout.image([{"app/hello.txt": "hello\n"}, {"app/two": "2\n"}],
                           config={"User": "1234:5", "Cmd": ["/app/run"]})
        layout.tag_image("app", app)
        named = layout.image([{"named.txt": "named\n"}], config={"User": "nobody:nogroup"})
        layout.tag_image("named", named)
        oci, dest = f"oci:{layout.path}", f"docker://{reg.host}"
        skopeo_copy(f"{oci}:app", f"{dest}/app:v1", "--preserve-digests")
        skopeo_copy(f"{oci}:app", f"{dest}/app:v2", "--preserve-digests")
        skopeo_copy(f"{oci}:named", f"{dest}/named:latest", "--preserve-digests")
        _, app_digest = raw_manifest(reg, "app:v1")
        htpasswd = os.path.join(workdir, "htpasswd")
        with open(htpasswd, "w") as f:
            f.write(htpasswd_line("alice", USERS["alice"]) + "\n")
        basic = Registry(workdir, storage, name="basic",
                         auth={"htpasswd": {"realm": "minirun-test", "path": htpasswd}}).start()
        started.append(basic)
        tokens = TokenServer(workdir, USERS).start()
        tokens.refresh_tokens[REFRESH_TOKEN] = "alice"
        started.append(tokens)
        token_reg = Registry(workdir, storage, name="token", auth=tokens.registry_auth()).start()
        started.append(token_reg)
        yield Env(reg, basic, token_reg, tokens, app_digest, app.config_digest,
                  named.config_digest)
    finally:
        for thing in reversed(started):
            thing.stop()


@pytest.fixture(scope="module")
def cri(tmp_path_factory):
    env = CriImagesEnv(str(tmp_path_factory.mktemp("cri-images")))
    try:
        env.import_busybox()
        env.start()
        yield env
    finally:
        left = env.teardown()
        assert not left, f"mounts left under the roots: {left}"


@pytest.fixture
def images(cri):
    with grpc.insecure_channel(f"unix:{cri.socket}") as ch:
        yield pb_grpc.ImageServiceStub(ch)


def spec(image: str) -> pb.ImageSpec:
    return pb.ImageSpec(image=image)


def status(images, image: str) -> pb.ImageStatusResponse:
    return images.ImageStatus(pb.ImageStatusRequest(image=spec(image)), timeout=30)


def pull(images, image: str, auth: pb.AuthConfig | None = None, timeout: float = 120) -> str:
    req = pb.PullImageRequest(image=spec(image))
    if auth is not None:
        req.auth.CopyFrom(auth)
    return images.PullImage(req, timeout=timeout).image_ref


def remove(images, image: str) -> None:
    images.RemoveImage(pb.RemoveImageRequest(image=spec(image)), timeout=30)


def listed(images, image: str = "") -> list[pb.Image]:
    req = pb.ListImagesRequest()
    if image:
        req.filter.image.image = image
    return list(images.ListImages(req, timeout=30).images)


def blobs(cri) -> set[str]:
    return set(os.listdir(os.path.join(cri.root, "blobs", "sha256")))


# --- pull and status ---------------------------------------------------------------------


def test_pull_then_status_by_tag_id_and_digest_is_the_same_image(env, cri, images):
    ref = f"{env.reg.host}/app:v1"
    image_ref = pull(images, ref)
    # containerd 1.6 answers the image id: the config digest
    assert image_ref == env.app_config
    by_tag = status(images, ref).image
    assert by_tag.id == env.app_config
    assert f"{env.reg.host}/app:v1" in by_tag.repo_tags
    assert f"{env.reg.host}/app@{env.app_digest}" in by_tag.repo_digests
    assert by_tag.size > 0
    assert by_tag.HasField("uid") and by_tag.uid.value == 1234
    assert by_tag.username == ""
    assert by_tag.spec.image == env.app_config
    for other in (env.app_config, env.app_config[7:], env.app_config[7:19],
                  f"{env.reg.host}/app@{env.app_digest}"):
        assert status(images, other).image == by_tag, other
    remove(images, ref)


def test_user_name_in_the_image_config(env, cri, images):
    pull(images, f"{env.reg.host}/named")
    image = status(images, f"{env.reg.host}/named:latest").image
    assert image.id == env.named_config
    assert image.username == "nobody"
    assert not image.HasField("uid")
    remove(images, env.named_config)


def test_an_absent_image_is_a_status_without_image(env, cri, images):
    for ref in (f"{env.reg.host}/app:nope", "sha256:" + "0" * 64,
                f"{env.reg.host}/named@sha256:" + "1" * 64):
        reply = status(images, ref)
        assert not reply.HasField("image"), ref


def test_a_digest_of_another_repository_is_not_this_image(env, cri, images):
    pull(images, f"{env.reg.host}/app:v1")
    try:
        assert not status(images, f"{env.reg.host}/other@{env.app_digest}").HasField("image")
    finally:
        remove(images, env.app_config)


def test_short_names_are_normalised_as_the_image_store_does(cri, images):
    # the fixture imported busybox:latest: docker.io/library/busybox:latest
    image = status(images, "busybox").image
    assert "docker.io/library/busybox:latest" in image.repo_tags
    assert status(images, "docker.io/library/busybox:latest").image == image
    assert status(images, "library/busybox").image == image


def test_verbose_status_carries_the_config(env, cri, images):
    reply = images.ImageStatus(pb.ImageStatusRequest(image=spec("busybox"), verbose=True),
                               timeout=30)
    info = json.loads(reply.info["info"])
    assert info["id"] == reply.image.id
    assert info["imageSpec"]["rootfs"]["type"] == "layers"
    assert not images.ImageStatus(pb.ImageStatusRequest(image=spec("busybox")),
                                  timeout=30).info


def test_an_empty_or_malformed_spec_is_invalid_argument(cri, images):
    for bad in ("", "UPPER/Case:tag", "name@sha256:short"):
        with pytest.raises(grpc.RpcError) as e:
            status(images, bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "\n" not in e.value.details()


# --- list ----------------------------------------------------------------------------------


def test_list_and_list_with_a_filter(env, cri, images):
    pull(images, f"{env.reg.host}/app:v1")
    pull(images, f"{env.reg.host}/named:latest")
    try:
        everything = listed(images)
        ids = {i.id for i in everything}
        assert {env.app_config, env.named_config} <= ids
        busybox = status(images, "busybox").image
        assert busybox in everything
        only = listed(images, f"{env.reg.host}/named:latest")
        assert [i.id for i in only] == [env.named_config]
        assert only[0] == status(images, env.named_config).image
        assert listed(images, f"{env.reg.host}/app:nope") == []
    finally:
        remove(images, env.app_config)
        remove(images, env.named_config)


# --- remove --------------------------------------------------------------------------------


def test_remove_takes_every_tag_and_is_idempotent(env, cri, images):
    pull(images, f"{env.reg.host}/app:v1")
    pull(images, f"{env.reg.host}/app:v2")
    tags = status(images, env.app_config).image.repo_tags
    assert set(tags) == {f"{env.reg.host}/app:v1", f"{env.reg.host}/app:v2"}
    remove(images, f"{env.reg.host}/app:v1")
    for ref in (f"{env.reg.host}/app:v1", f"{env.reg.host}/app:v2", env.app_config):
        assert not status(images, ref).HasField("image"), ref
    assert env.app_config not in {i.id for i in listed(images)}
    # its blobs went with it (nothing else here shares them)
    assert env.app_config[7:] not in blobs(cri)
    # again, by tag and by id: nothing there is a success
    remove(images, f"{env.reg.host}/app:v1")
    remove(images, env.app_config)


def test_remove_of_an_image_a_container_uses(cri, images, tmp_path):
    """The names go at once (containerd removes the references); the record stays, without
    tags, while the container's snapshot sits on its layers; removing it by id once the
    container is gone deletes it."""
    busybox = status(images, "busybox").image
    cri("tag", "busybox", "inuse:1", check=True)
    run = cri("run", "-d", "--name", "uses-inuse", "--network", "none", "inuse:1",
              "sleep", "300", check=True)
    cid = run.stdout.strip()
    try:
        inuse = status(images, "inuse:1").image
        assert inuse.id == busybox.id
        cri("rmi", "busybox", check=True)  # leave inuse:1 as its only name
        remove(images, "inuse:1")
        assert not status(images, "inuse:1").HasField("image")
        left = status(images, busybox.id).image
        assert left.id == busybox.id and list(left.repo_tags) == []
        assert json.loads(cri("inspect", cid, check=True).stdout)[0]["State"]["Status"] == "running"
    finally:
        cri("rm", "-f", cid, check=True)
    remove(images, busybox.id)
    assert not status(images, busybox.id).HasField("image")
    # put busybox back for the other tests
    tar = os.path.join(str(tmp_path), "busybox.tar")
    subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", tar], check=True,
                   stdout=subprocess.DEVNULL)
    cri("import", tar, "busybox:latest", check=True)


# --- auth ----------------------------------------------------------------------------------


def assert_one_error(e: pytest.ExceptionInfo, *parts: str) -> None:
    details = e.value.details()
    assert "\n" not in details
    for part in parts:
        assert part in details, details


def test_pull_with_basic_auth_from_the_request(env, cri, images):
    ref = f"{env.basic.host}/app:v1"
    with pytest.raises(grpc.RpcError) as e:
        pull(images, ref)
    assert_one_error(e, "requires authentication")
    assert pull(images, ref, pb.AuthConfig(username="alice", password="wonderland")) \
        == env.app_config
    remove(images, env.app_config)
    encoded = base64.b64encode(b"alice:wonderland").decode()
    assert pull(images, ref, pb.AuthConfig(auth=encoded)) == env.app_config
    remove(images, env.app_config)


def test_pull_with_wrong_credentials_is_one_clear_error_and_keeps_nothing(env, cri, images):
    before = blobs(cri)
    ref = f"{env.basic.host}/app:v1"
    with pytest.raises(grpc.RpcError) as e:
        pull(images, ref, pb.AuthConfig(username="alice", password="looking-glass"))
    assert e.value.code() == grpc.StatusCode.UNKNOWN
    assert_one_error(e, env.basic.host, "refused the credentials of user 'alice'",
                     "PullImage request")
    assert not status(images, ref).HasField("image")
    assert blobs(cri) == before
    with pytest.raises(grpc.RpcError) as e:
        pull(images, ref, pb.AuthConfig(auth="not base64!"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_one_error(e, "base64")


def test_credentials_for_another_server_are_not_sent(env, cri, images):
    ref = f"{env.basic.host}/app:v1"
    with pytest.raises(grpc.RpcError) as e:
        pull(images, ref, pb.AuthConfig(username="alice", password="wonderland",
                                        server_address="elsewhere.example:5000"))
    assert_one_error(e, "requires authentication")


def test_pull_with_a_registry_token(env, cri, images):
    import urllib.request

    scope = "repository:app:pull"
    req = urllib.request.Request(
        f"{env.tokens.realm}?service={env.tokens.service}&scope={scope}",
        headers={"Authorization": "Basic " + base64.b64encode(b"alice:wonderland").decode()})
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.load(resp)["token"]
    ref = f"{env.token_reg.host}/app:v1"
    assert pull(images, ref, pb.AuthConfig(registry_token=token)) == env.app_config
    remove(images, env.app_config)
    with pytest.raises(grpc.RpcError) as e:
        pull(images, ref, pb.AuthConfig(registry_token="not-a-token"))
    assert_one_error(e, "refused the registry token")


def test_pull_with_an_identity_token(env, cri, images):
    ref = f"{env.token_reg.host}/app:v1"
    assert pull(images, ref, pb.AuthConfig(identity_token=REFRESH_TOKEN)) == env.app_config
    grants = [s for s in env.tokens.seen if s.get("grant_type")]
    assert grants[-1]["user"] == "alice" and grants[-1]["scope"] == ["repository:app:pull"]
    remove(images, env.app_config)
    with pytest.raises(grpc.RpcError) as e:
        pull(images, ref, pb.AuthConfig(identity_token="stale"))
    assert_one_error(e, "refused the identity token")


# --- deadline ------------------------------------------------------------------------------


def test_a_one_millisecond_deadline(env, cri, images):
    before = blobs(cri)
    ref = f"{env.reg.host}/app:v1"
    with pytest.raises(grpc.RpcError) as e:
        pull(images, ref, timeout=0.001)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1)
    assert not status(images, ref).HasField("image")
    assert env.app_config not in {i.id for i in listed(images)}
    assert blobs(cri) == before


def test_the_server_stops_a_pull_at_the_deadline(env, cri, images):
    """A layer the registry holds back 4 s, a 1.5 s deadline: the server gives up at the
    deadline and deletes what it fetched; the image never appears, even after the registry
    would have answered."""
    proxy = FaultProxy(env.reg).start()
    try:
        before = blobs(cri)
        proxy.add("GET", r"/blobs/sha256:", "delay:4", 10)
        ref = f"{proxy.host}/app:v1"
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            pull(images, ref, timeout=1.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(5)  # past the held-back answers
        assert not status(images, ref).HasField("image")
        assert blobs(cri) == before
        assert [n for n in os.listdir(os.path.join(cri.root, "blobs", "sha256"))
                if n.startswith(".tmp")] == []
        # the server gave up: it asked for no blob after the first delayed one
        assert len([p for m, p, _ in proxy.log if "/blobs/" in p]) == 1, proxy.log
        assert time.monotonic() - t0 < 10
    finally:
        proxy.stop()


# --- image fs info -------------------------------------------------------------------------


def test_image_fs_info(env, cri, images):
    pull(images, f"{env.reg.host}/app:v1")
    try:
        t0 = time.time_ns()
        info = images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=30)
        (fs,) = info.image_filesystems
        assert fs.fs_id.mountpoint == cri.root
        assert abs(fs.timestamp - t0) < 10 * 10**9
        blob_bytes = sum(os.path.getsize(os.path.join(cri.root, "blobs", "sha256", n))
                         for n in blobs(cri))
        # at least the blobs plus the unpacked busybox (about 1 MB)
        assert fs.used_bytes.value >= blob_bytes + 500_000
        counted = [os.path.join(cri.root, "blobs", "sha256"), os.path.join(cri.root, "layers")]
        du = subprocess.run(["du", "-s", "-B1", "-x", *counted],
                            capture_output=True, text=True, check=True).stdout.split()
        total = int(du[0]) + int(du[2])
        # du counts directories the same way; allow for the store changing meanwhile
        assert abs(fs.used_bytes.value - total) <= 64 * 1024, (fs.used_bytes.value, total)
        found = subprocess.run(["find", *counted, "-xdev", "-mindepth", "1",
                                "-printf", "%i\n"], capture_output=True, text=True,
                               check=True).stdout.split()
        assert fs.inodes_used.value == len(set(found))
    finally:
        remove(images, env.app_config)


# --- pure parts ----------------------------------------------------------------------------


def test_user_of_and_request_credentials():
    from minirun.cri.image_service import request_credentials, user_of
    from minirun.errors import InvalidArgument

    assert user_of({"config": {"User": "1000:1000"}}) == (1000, "")
    assert user_of({"config": {"User": "www-data"}}) == (None, "www-data")
    assert user_of({"config": {}}) == (None, "")
    assert user_of({}) == (None, "")
    assert request_credentials(pb.AuthConfig(), "docker.io") is None
    creds = request_credentials(pb.AuthConfig(auth=base64.b64encode(b"u:p:q").decode()),
                                "docker.io")
    (c,) = creds.values()
    assert list(creds) == ["docker.io"] and (c.username, c.password) == ("u", "p:q")
    creds = request_credentials(
        pb.AuthConfig(username="u", password="p", server_address="https://index.docker.io/v1/"),
        "quay.io")
    assert list(creds) == ["docker.io"]
    with pytest.raises(InvalidArgument, match="no ':'"):
        request_credentials(pb.AuthConfig(auth=base64.b64encode(b"user").decode()), "x")


def test_image_fs_info_follows_pulls_and_removals(env, cri, images):
    def used() -> tuple[int, int]:
        (fs,) = images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=30).image_filesystems
        return fs.used_bytes.value, fs.inodes_used.value

    before = used()
    assert used() == before
    pull(images, f"{env.reg.host}/named:latest")
    grown = used()
    assert grown[0] > before[0] and grown[1] > before[1]
    remove(images, env.named_config)
    assert used() == before


def test_the_image_service_under_v1alpha2(cri, images):
    """kubelets up to 1.25 call runtime.v1alpha2: the same answers (its messages are a
    wire-compatible subset of v1's)."""
    with grpc.insecure_channel(f"unix:{cri.socket}") as ch:
        call = ch.unary_unary("/runtime.v1alpha2.ImageService/ImageStatus",
                              request_serializer=pb.ImageStatusRequest.SerializeToString,
                              response_deserializer=pb.ImageStatusResponse.FromString)
        reply = call(pb.ImageStatusRequest(image=spec("busybox")), timeout=30)
    assert reply.image == status(images, "busybox").image
    assert reply.image.id.startswith("sha256:")


def test_simultaneous_removals_all_succeed(env, cri, images):
    """critest's case: five RemoveImage calls by id at once, each followed by ImageStatus;
    every call succeeds and none sees the image after its removal returned; listing
    meanwhile never fails."""
    import threading

    pull(images, f"{env.reg.host}/app:v1")
    results: list = []
    listing_errors: list = []
    stop = threading.Event()

    def remove_then_status() -> None:
        try:
            remove(images, env.app_config)
            results.append(status(images, env.app_config).HasField("image"))
        except grpc.RpcError as e:
            results.append(e)

    def keep_listing() -> None:
        while not stop.is_set():
            try:
                listed(images)
            except grpc.RpcError as e:
                listing_errors.append(e)

    lister = threading.Thread(target=keep_listing)
    lister.start()
    threads = [threading.Thread(target=remove_then_status) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    lister.join()
    assert results == [False] * 5
    assert listing_errors == []
    assert env.app_config[7:] not in blobs(cri)
