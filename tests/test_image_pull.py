"""`minirun pull` against a real registry: Debian's docker-registry (CNCF distribution 2.8) on
127.0.0.1, fed with images built here as OCI layouts and pushed by skopeo in each form the
client must read (OCI and docker schema 2 manifests, an OCI index for amd64 and arm64, gzip,
zstd and uncompressed layers, the busybox rootfs). The same storage is served by a second
instance with htpasswd basic auth and a third with bearer-token auth (the token server is
written in tests/registry.py; the registry checks its RS256 tokens itself). Faults a real
registry never makes (5xx, cut transfers, wrong bytes) come from a forwarding proxy in front
of the real one. Nothing here talks to anything but loopback.
"""

from __future__ import annotations

import gzip
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from registry import (
    FaultProxy,
    Image,
    Layout,
    Registry,
    TokenServer,
    auth_file,
    free_port,
    htpasswd_line,
    make_cert,
    raw_manifest,
    skopeo_copy,
)

from minirun.errors import InvalidArgument, NotFound
from minirun.image import InvalidImage
from minirun.image import registry as R
from minirun.image.store import ImageStore

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers with their owners needs root"),
]

SMALL = [{"hello.txt": "hello\n", "etc/greeting": "hi", "dir/a": "a"}, {"dir/b": "b\n"}]
PLAIN = [{"plain.txt": "plain\n", "lib/one": "1"}, {"lib/two": "2"}]


@dataclass
class Env:
    workdir: str
    reg: Registry
    basic: Registry
    token_reg: Registry
    tokens: TokenServer
    small: Image
    plain: Image
    amd64: Image
    arm64: Image
    index_digest: str
    busybox: Image
    v2s2_digest: str
    zstd_digest: str
    users: dict

    def ref(self, name: str, registry: Registry | None = None) -> str:
        return f"{(registry or self.reg).host}/{name}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    assert os.path.exists("/usr/bin/docker-registry"), (
        "docker-registry is not installed: run scripts/install.sh"
    )
    workdir = str(tmp_path_factory.mktemp("registry"))
    storage = os.path.join(workdir, "storage")
    started: list = []
    try:
        reg = Registry(workdir, storage, name="open").start()
        started.append(reg)
        layout = Layout(os.path.join(workdir, "layout"))
        small = layout.image(SMALL)
        layout.tag_image("small", small)
        plain = layout.image(PLAIN, compression="none")
        layout.tag_image("plain", plain)
        amd64 = layout.image([{"arch": "amd64\n"}])
        arm64 = layout.image([{"arch": "arm64\n"}], arch="arm64")
        index_digest = layout.multi_arch("multi", {"amd64": amd64, "arm64": arm64})
        tarball = os.path.join(workdir, "busybox.tar")
        subprocess.run(
            [os.path.join(CHECKOUT, "rootfs", "build.sh"), "--tar", tarball],
            check=True,
            capture_output=True,
            timeout=300,
        )
        with open(tarball, "rb") as f:
            busybox_blob = gzip.compress(f.read(), mtime=0)
        busybox = layout.image(
            [], layer_blobs=[(busybox_blob, "application/vnd.oci.image.layer.v1.tar+gzip")]
        )
        layout.tag_image("busybox", busybox)

        oci = f"oci:{layout.path}"
        dest = f"docker://{reg.host}"
        # --preserve-digests: what was built here is byte for byte what the registry holds
        skopeo_copy(f"{oci}:small", f"{dest}/small:oci", "--preserve-digests")
        skopeo_copy(f"{oci}:small", f"{dest}/small:v2s2", "--format", "v2s2")
        # zstd first: once the uncompressed blobs are in the repository, skopeo would reuse
        # them instead of compressing
        skopeo_copy(f"{oci}:plain", f"{dest}/plain:zstd", "--dest-compress-format", "zstd")
        skopeo_copy(f"{oci}:plain", f"{dest}/plain:none", "--preserve-digests")
        skopeo_copy(f"{oci}:multi", f"{dest}/multi:latest", "--all", "--preserve-digests")
        skopeo_copy(f"{oci}:busybox", f"{dest}/busybox:latest", "--preserve-digests")
        skopeo_copy(f"{oci}:multi", f"{dest}/multi:v2s2", "--all", "--format", "v2s2")
        v2s2, v2s2_digest = raw_manifest(reg, "small:v2s2")
        assert v2s2["mediaType"] == R.MEDIA_DOCKER_MANIFEST
        manifest_list, _ = raw_manifest(reg, "multi:v2s2")
        assert manifest_list["mediaType"] == R.MEDIA_DOCKER_LIST
        zstd, zstd_digest = raw_manifest(reg, "plain:zstd")
        assert {layer["mediaType"] for layer in zstd["layers"]} == {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        }

        users = {"alice": "wonderland"}
        htpasswd = os.path.join(workdir, "htpasswd")
        with open(htpasswd, "w") as f:
            f.write(htpasswd_line("alice", users["alice"]) + "\n")
        basic = Registry(
            workdir,
            storage,
            name="basic",
            auth={"htpasswd": {"realm": "minirun-test", "path": htpasswd}},
        ).start()
        started.append(basic)
        tokens = TokenServer(workdir, users).start()
        started.append(tokens)
        token_reg = Registry(workdir, storage, name="token", auth=tokens.registry_auth()).start()
        started.append(token_reg)
        yield Env(
            workdir,
            reg,
            basic,
            token_reg,
            tokens,
            small,
            plain,
            amd64,
            arm64,
            index_digest,
            busybox,
            v2s2_digest,
            zstd_digest,
            users,
        )
    finally:
        for thing in reversed(started):
            thing.stop()


@pytest.fixture
def store(tmp_path):
    s = ImageStore(str(tmp_path / "root"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def no_auth_file(tmp_path, monkeypatch):
    """Keep the host's own credentials files out of the tests."""
    path = auth_file(str(tmp_path / "empty-auth.json"), {})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", path)
    monkeypatch.delenv("MINIRUN_REGISTRIES_CONF", raising=False)
    return path


NO_CONFIG = R.RegistryConfig()


def pull(store, ref, **kw):
    kw.setdefault("config", NO_CONFIG)
    kw.setdefault("backoff", 0.01)
    return R.pull(store, ref, **kw)


def files_of(store: ImageStore, record) -> dict[str, bytes]:
    """Each regular file in the image's layers as the top layer shows it."""
    out: dict[str, bytes] = {}
    for layer in store.layer_dirs(record):
        for dirpath, _, names in os.walk(layer):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        out[os.path.relpath(path, layer)] = f.read()
    return out


def expected_files(layers: list[dict]) -> dict[str, bytes]:
    out = {}
    for layer in layers:
        out.update({k: v.encode() for k, v in layer.items()})
    return out


def wait_log_quiet(reg: Registry) -> None:
    """The registry logs a request after it has answered: wait until the log stops growing."""
    size = -1
    while size != os.path.getsize(reg.log_path):
        size = os.path.getsize(reg.log_path)
        time.sleep(0.3)


# --- the forms of images ---------------------------------------------------------------


def test_oci_manifest_gzip_layers(env, store, no_auth_file):
    stats = R.PullStats()
    record = pull(store, env.ref("small:oci"), stats=stats)
    assert record.id == env.small.config_digest
    assert record.manifest_digest == env.small.manifest_digest
    assert record.names == [env.ref("small:oci")]
    assert record.diff_ids == env.small.diff_ids
    assert [layer["media_type"] for layer in record.layers] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 2
    assert files_of(store, record) == expected_files(SMALL)
    assert sorted(stats.blobs_fetched) == sorted(
        [env.small.config_digest] + env.small.layer_digests
    )
    assert store.get(env.ref("small:oci")).id == record.id


def test_docker_schema2_manifest(env, store, no_auth_file):
    record = pull(store, env.ref("small:v2s2"))
    assert record.manifest_digest == env.v2s2_digest
    assert [layer["media_type"] for layer in record.layers] == [
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    ] * 2
    assert record.diff_ids == env.small.diff_ids
    assert files_of(store, record) == expected_files(SMALL)


def test_uncompressed_layers(env, store, no_auth_file):
    record = pull(store, env.ref("plain:none"))
    assert record.manifest_digest == env.plain.manifest_digest
    assert [layer["media_type"] for layer in record.layers] == [
        "application/vnd.oci.image.layer.v1.tar"
    ] * 2
    assert files_of(store, record) == expected_files(PLAIN)


def test_zstd_layers(env, store, no_auth_file):
    record = pull(store, env.ref("plain:zstd"))
    assert record.manifest_digest == env.zstd_digest
    assert [layer["media_type"] for layer in record.layers] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ] * 2
    # Same content as the uncompressed push: the same diff ids, other blobs.
    assert record.diff_ids == env.plain.diff_ids
    assert [layer["digest"] for layer in record.layers] != env.plain.layer_digests
    assert files_of(store, record) == expected_files(PLAIN)


def test_busybox_rootfs_image(env, store, no_auth_file):
    record = pull(store, env.ref("busybox"))
    assert record.names == [env.ref("busybox:latest")]
    [layer] = store.layer_dirs(record)
    busybox = os.path.join(layer, "bin", "busybox")
    assert os.access(busybox, os.X_OK)
    out = subprocess.run([busybox, "echo", "pulled"], capture_output=True, text=True, check=True)
    assert out.stdout == "pulled\n"
    assert os.path.isdir(os.path.join(layer, "etc"))


# --- indexes and platforms ---------------------------------------------------------------


def test_index_picks_the_host_platform(env, store, no_auth_file):
    host = R.host_platform()
    assert host.architecture in ("amd64", "arm64"), "the test image has amd64 and arm64 only"
    record = pull(store, env.ref("multi:latest"))
    want = env.amd64 if host.architecture == "amd64" else env.arm64
    assert record.id == want.config_digest
    # As docker's repo digest: the digest the tag resolved to, the index's.
    assert record.manifest_digest == env.index_digest
    assert files_of(store, record) == {"arch": f"{host.architecture}\n".encode()}


@pytest.mark.parametrize(
    "platform,arch",
    [("linux/amd64", "amd64"), ("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64")],
)
def test_index_platform_option(env, store, no_auth_file, platform, arch):
    record = pull(store, env.ref("multi:latest"), platform=platform)
    assert record.id == getattr(env, arch).config_digest
    assert record.config["architecture"] == arch
    assert files_of(store, record) == {"arch": f"{arch}\n".encode()}


@pytest.mark.parametrize("platform,arch", [("linux/amd64", "amd64"), ("linux/arm64", "arm64")])
def test_docker_manifest_list(env, store, no_auth_file, platform, arch):
    record = pull(store, env.ref("multi:v2s2"), platform=platform)
    assert record.config["architecture"] == arch
    assert [layer["media_type"] for layer in record.layers] == [
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    ]
    assert files_of(store, record) == {"arch": f"{arch}\n".encode()}


def test_index_without_the_platform(env, store, no_auth_file):
    with pytest.raises(NotFound) as e:
        pull(store, env.ref("multi:latest"), platform="linux/s390x")
    assert str(e.value) == (
        f"no linux/s390x image in {env.ref('multi:latest')} (it has: linux/amd64, linux/arm64/v8)"
    )
    assert store.images() == []


# --- digests, repeats, refusals ----------------------------------------------------------


def test_pulling_again_downloads_nothing(env, store, no_auth_file):
    pull(store, env.ref("small:oci"))
    wait_log_quiet(env.reg)
    blobs_before = len(env.reg.blob_gets())
    stats = R.PullStats()
    record = pull(store, env.ref("small:oci"), stats=stats)
    wait_log_quiet(env.reg)
    assert stats.blobs_fetched == []
    assert sorted(stats.blobs_present) == sorted(
        [env.small.config_digest] + env.small.layer_digests
    )
    assert len(env.reg.blob_gets()) == blobs_before
    assert record.id == env.small.config_digest


def test_pull_by_digest(env, store, no_auth_file):
    ref = env.ref(f"small@{env.small.manifest_digest}")
    record = pull(store, ref)
    assert record.id == env.small.config_digest
    assert record.names == [ref]
    assert store.get(ref).id == record.id
    assert files_of(store, record) == expected_files(SMALL)
    # Content-addressed and stored: pulling the same digest again asks the registry nothing.
    wait_log_quiet(env.reg)
    before = len(env.reg.requests("GET")) + len(env.reg.requests("HEAD"))
    stats = R.PullStats()
    pull(store, ref, stats=stats)
    wait_log_quiet(env.reg)
    assert stats.requests == 0
    assert len(env.reg.requests("GET")) + len(env.reg.requests("HEAD")) == before


def test_pull_index_by_digest(env, store, no_auth_file):
    record = pull(store, env.ref(f"multi@{env.index_digest}"), platform="linux/arm64")
    assert record.id == env.arm64.config_digest


def test_unknown_tag_is_not_found(env, store, no_auth_file):
    with pytest.raises(NotFound) as e:
        pull(store, env.ref("small:nope"))
    assert str(e.value) == f"image {env.ref('small:nope')} not found (manifest unknown)"
    with pytest.raises(NotFound) as e:
        pull(store, env.ref("nothere"))
    assert str(e.value).startswith(f"image {env.ref('nothere:latest')} not found")


def test_unknown_digest_is_not_found(env, store, no_auth_file):
    ref = env.ref("small@sha256:" + "0" * 64)
    with pytest.raises(NotFound) as e:
        pull(store, ref)
    assert env.ref("small@sha256:") in str(e.value)


@pytest.fixture
def proxy(env):
    p = FaultProxy(env.reg).start()
    try:
        yield p
    finally:
        p.stop()


def test_wrong_manifest_bytes_for_a_digest_are_refused(env, store, no_auth_file, proxy):
    proxy.add("GET", r"/manifests/sha256:", "corrupt")
    ref = f"{proxy.host}/small@{env.small.manifest_digest}"
    with pytest.raises(InvalidImage) as e:
        pull(store, ref)
    assert str(e.value).startswith(
        f"pull {ref}: manifest digest mismatch: expected {env.small.manifest_digest}, got sha256:"
    )
    assert not store.has_blob(env.small.manifest_digest)
    assert store.images() == []


def test_manifest_not_matching_the_registry_digest_header_is_refused(
    env, store, no_auth_file, proxy
):
    proxy.add("GET", r"/manifests/oci$", "corrupt")
    with pytest.raises(InvalidImage, match="manifest digest mismatch"):
        pull(store, f"{proxy.host}/small:oci")
    assert store.images() == []


def test_wrong_layer_bytes_are_refused_and_not_kept(env, store, no_auth_file, proxy):
    layer = env.small.layer_digests[0]
    proxy.add("GET", f"/blobs/{layer}$", "corrupt")
    with pytest.raises(InvalidImage) as e:
        pull(store, f"{proxy.host}/small:oci")
    assert str(e.value).startswith(f"digest mismatch: expected {layer}, got sha256:")
    assert not store.has_blob(layer)
    assert [n for n in os.listdir(store.blobs_dir) if n.startswith(".tmp")] == []
    assert store.images() == []


# --- retries ---------------------------------------------------------------------------


def test_5xx_is_retried(env, store, no_auth_file, proxy):
    proxy.add("GET", r"/manifests/", "503", 2)
    proxy.add("GET", r"/blobs/", "503", 1)
    record = pull(store, f"{proxy.host}/small:oci")
    assert record.id == env.small.config_digest
    assert [a for _, _, a in proxy.log].count("503") == 3


def test_cut_transfer_is_retried(env, store, no_auth_file, proxy):
    layer = env.small.layer_digests[1]
    proxy.add("GET", f"/blobs/{layer}$", "reset", 2)
    record = pull(store, f"{proxy.host}/small:oci")
    assert files_of(store, record) == expected_files(SMALL)
    assert [(p, a) for _, p, a in proxy.log if p.endswith(layer)] == [
        (f"/v2/small/blobs/{layer}", "reset"),
        (f"/v2/small/blobs/{layer}", "reset"),
        (f"/v2/small/blobs/{layer}", "forward"),
    ]


def test_retries_are_bounded(env, store, no_auth_file, proxy):
    proxy.add("GET", r"/manifests/", "503", 100)
    with pytest.raises(R.RegistryError) as e:
        pull(store, f"{proxy.host}/small:oci", retries=2)
    assert str(e.value) == (
        f"pull {proxy.host}/small:oci: {proxy.host} answered 503 Service Unavailable (injected)"
    )
    assert len([a for _, _, a in proxy.log if a == "503"]) == 3


def test_unreachable_registry(store, no_auth_file):
    port = free_port()
    with pytest.raises(R.RegistryError) as e:
        pull(store, f"127.0.0.1:{port}/small:oci")
    assert str(e.value) == f"cannot connect to registry 127.0.0.1:{port}: connection refused"


# --- authentication --------------------------------------------------------------------


def test_basic_auth_without_credentials(env, store, no_auth_file):
    with pytest.raises(R.AuthenticationError) as e:
        pull(store, env.ref("small:oci", env.basic))
    assert str(e.value) == (
        f"pull {env.ref('small:oci', env.basic)}: {env.basic.host} requires authentication "
        "and no credentials were found for it (use --authfile or REGISTRY_AUTH_FILE)"
    )
    assert store.images() == []


def test_basic_auth_wrong_password(env, store, tmp_path, no_auth_file):
    path = auth_file(str(tmp_path / "auth.json"), {env.basic.host: ("alice", "nope")})
    with pytest.raises(R.AuthenticationError) as e:
        pull(store, env.ref("small:oci", env.basic), auth_file=path)
    assert str(e.value).endswith(
        f"{env.basic.host} refused the credentials of user 'alice' (from {path})"
    )


def test_basic_auth_from_auth_file(env, store, tmp_path, no_auth_file, monkeypatch):
    path = auth_file(
        str(tmp_path / "auth.json"), {f"http://{env.basic.host}": ("alice", env.users["alice"])}
    )
    monkeypatch.setenv("REGISTRY_AUTH_FILE", path)
    record = pull(store, env.ref("small:oci", env.basic))
    assert files_of(store, record) == expected_files(SMALL)
    wait_log_quiet(env.basic)
    # the registry let each blob request through on the credentials
    authorized = re.findall(
        r'msg="authorized request".*http\.request\.uri="?([^"\s]+)', env.basic.log()
    )
    assert {f"/v2/small/blobs/{d}" for d in env.small.layer_digests} <= set(authorized)


def test_bearer_token_flow(env, store, tmp_path, no_auth_file):
    path = auth_file(
        str(tmp_path / "auth.json"), {env.token_reg.host: ("alice", env.users["alice"])}
    )
    env.tokens.seen.clear()
    record = pull(store, env.ref("small:oci", env.token_reg), auth_file=path)
    assert files_of(store, record) == expected_files(SMALL)
    # One token for the whole pull, asked for the registry's service and the repository.
    assert env.tokens.seen == [
        {"user": "alice", "scope": ["repository:small:pull"], "service": ["minirun-test"]}
    ]


def test_bearer_token_refused(env, store, tmp_path, no_auth_file):
    with pytest.raises(R.AuthenticationError, match="requires authentication and no credentials"):
        pull(store, env.ref("small:oci", env.token_reg))
    path = auth_file(str(tmp_path / "auth.json"), {env.token_reg.host: ("alice", "nope")})
    with pytest.raises(R.AuthenticationError, match="refused the credentials of user 'alice'"):
        pull(store, env.ref("small:oci", env.token_reg), auth_file=path)
    assert store.images() == []


def test_bearer_token_without_access(env, store, tmp_path, no_auth_file):
    path = auth_file(
        str(tmp_path / "auth.json"), {env.token_reg.host: ("alice", env.users["alice"])}
    )
    env.tokens.denied.add("small")
    try:
        with pytest.raises(R.AuthenticationError) as e:
            pull(store, env.ref("small:oci", env.token_reg), auth_file=path)
    finally:
        env.tokens.denied.discard("small")
    assert str(e.value) == (
        f"pull {env.ref('small:oci', env.token_reg)}: {env.token_reg.host} denied access to "
        "small: it does not exist or needs other credentials"
    )


# --- transport: TLS, insecure, mirrors ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_registry(env):
    """The same images over https with a self-signed certificate for registry.test."""
    cert, key = make_cert(
        env.workdir, "registry-tls", cn="registry.test", sans="DNS:registry.test,IP:127.0.0.1"
    )
    reg = Registry(env.workdir, os.path.join(env.workdir, "storage"), name="tls", tls=(cert, key))
    try:
        yield reg.start(), cert
    finally:
        reg.stop()


def test_loopback_tls_registry_without_verification(tls_registry, store, no_auth_file, env):
    reg, _ = tls_registry
    record = pull(store, f"{reg.host}/small:oci")
    assert record.id == env.small.config_digest
    wait_log_quiet(reg)
    assert reg.blob_gets(), "the pull went to the https registry"


PULL_IN_NS = """
import json, sys
from minirun.image import registry as R
from minirun.image.store import ImageStore
ref, root, insecure = sys.argv[1], sys.argv[2], sys.argv[3:]
with ImageStore(root) as store:
    try:
        rec = R.pull(store, ref, config=R.RegistryConfig(), insecure_registries=insecure)
        print(json.dumps({"id": rec.id}))
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def pull_as_registry_test(tmp_path, reg: Registry, insecure: list[str], cert: str | None):
    """Pull registry.test:<port>/small:oci in a mount namespace whose /etc/hosts maps
    registry.test to 127.0.0.1: a name that is not loopback to the client, without DNS."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost registry.test\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_")}
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "none.json")
    (tmp_path / "none.json").write_text('{"auths": {}}')
    if cert:
        env["SSL_CERT_FILE"] = cert
    root = tmp_path / f"root-{len(list(tmp_path.iterdir()))}"
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(hosts),
            sys.executable,
            "-c",
            PULL_IN_NS,
            f"registry.test:{reg.port}/small:oci",
            str(root),
            *insecure,
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=CHECKOUT,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_tls_verified_for_a_non_local_name(tls_registry, tmp_path, env):
    reg, cert = tls_registry
    refused = pull_as_registry_test(tmp_path, reg, [], None)
    assert refused["error"] == "RegistryError"
    assert refused["message"].startswith(f"tls certificate of registry.test:{reg.port} not trusted")
    assert refused["message"].endswith("add it to the insecure registries to skip verification")
    # Trusted through the usual OpenSSL variable: verified https works.
    assert pull_as_registry_test(tmp_path, reg, [], cert) == {"id": env.small.config_digest}
    # Named insecure: https without verification.
    assert pull_as_registry_test(tmp_path, reg, [f"registry.test:{reg.port}"], None) == {
        "id": env.small.config_digest
    }


def test_no_plain_http_to_a_non_local_name(env, tmp_path):
    """The plain-http registry under a non-loopback name: https fails, and http is not tried
    unless the registry is named insecure."""
    refused = pull_as_registry_test(tmp_path, env.reg, [], None)
    assert refused["error"] == "RegistryError"
    assert f"registry.test:{env.reg.port}" in refused["message"]
    assert pull_as_registry_test(tmp_path, env.reg, [f"registry.test:{env.reg.port}"], None) == {
        "id": env.small.config_digest
    }


def test_mirror_is_used_first(env, store, tmp_path, no_auth_file):
    conf = tmp_path / "registries.json"
    down = f"127.0.0.1:{free_port()}"
    conf.write_text(json.dumps({"mirrors": {"registry.invalid": [down, env.reg.host]}}))
    config = R.load_config(str(conf))
    record = pull(store, "registry.invalid/small:oci", config=config)
    assert record.id == env.small.config_digest
    assert record.names == ["registry.invalid/small:oci"]


# --- the command ------------------------------------------------------------------------


def minirun(*args, env_extra=None, **kw):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "minirun.cli", *args],
        check=False,
        env=env,
        cwd=CHECKOUT,
        timeout=120,
        **kw,
    )


def test_cli_pull_quiet_without_a_terminal(env, tmp_path, no_auth_file):
    root = str(tmp_path / "root")
    out = minirun("pull", "--root", root, env.ref("small:oci"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == env.small.config_digest + "\n"
    assert out.stderr == ""
    with ImageStore(root) as s:
        assert s.get(env.ref("small:oci")).id == env.small.config_digest


def test_cli_pull_progress_on_a_terminal(env, tmp_path, no_auth_file):
    root = str(tmp_path / "root")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minirun.cli", "pull", "--root", root, env.ref("busybox")],
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=CHECKOUT,
            text=True,
        )
        os.close(slave)
        slave = -1
        shown = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        stdout, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0, shown
    assert stdout == env.busybox.config_digest + "\n"
    text = shown.decode()
    layer = env.busybox.layer_digests[0]
    assert f"{layer[:19]} [" in text  # the bar
    assert f"{layer[:19]} done" in text
    assert f"pulled {env.ref('busybox')} ({env.busybox.manifest_digest})" in text


def test_cli_pull_errors_are_one_line(env, tmp_path, no_auth_file):
    out = minirun(
        "pull",
        "--root",
        str(tmp_path / "root"),
        env.ref("small:nope"),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert (
        out.stderr
        == f"minirun: error: image {env.ref('small:nope')} not found (manifest unknown)\n"
    )
    out = minirun(
        "pull", "--root", str(tmp_path / "root"), "UPPERCASE", capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.startswith("minirun: error: invalid reference format")
    assert out.stderr.count("\n") == 1


def test_cli_pull_with_authfile_and_platform(env, tmp_path, no_auth_file):
    path = auth_file(str(tmp_path / "auth.json"), {env.basic.host: ("alice", env.users["alice"])})
    out = minirun(
        "pull",
        "-q",
        "--root",
        str(tmp_path / "root"),
        "--authfile",
        path,
        "--platform",
        "linux/arm64",
        env.ref("multi:latest", env.basic),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == env.arm64.config_digest + "\n"


# --- pieces without a registry -----------------------------------------------------------


def test_load_config(tmp_path, monkeypatch):
    conf = tmp_path / "registries.json"
    conf.write_text(
        json.dumps(
            {
                "insecure": ["Reg.Example:5000"],
                "mirrors": {"index.docker.io": ["https://mirror.example/"]},
            }
        )
    )
    monkeypatch.setenv("MINIRUN_REGISTRIES_CONF", str(conf))
    config = R.load_config()
    assert config.insecure == ("reg.example:5000",)
    assert config.mirrors == {"docker.io": ("mirror.example",)}
    conf.write_text('{"insecure": "reg.example"}')
    with pytest.raises(InvalidArgument, match="'insecure' must be a list of hosts"):
        R.load_config()
    monkeypatch.setenv("MINIRUN_REGISTRIES_CONF", str(tmp_path / "missing.json"))
    with pytest.raises(NotFound, match="does not exist"):
        R.load_config()


def test_credentials_lookup(tmp_path):
    path = str(tmp_path / "auth.json")
    auth_file(
        path,
        {
            "https://index.docker.io/v1/": ("hub", "h"),
            "reg.example:5000": ("plain", "p"),
            "reg.example:5000/team": ("team", "t"),
        },
    )
    assert R.load_credentials("docker.io", "library/busybox", path).username == "hub"
    assert R.load_credentials("reg.example:5000", "other/x", path).username == "plain"
    assert R.load_credentials("reg.example:5000", "team/app", path).username == "team"
    assert R.load_credentials("reg.example", "team/app", path) is None
    with open(path, "w") as f:  # what docker leaves when a credential helper has the secret
        json.dump({"auths": {"reg.example": {}}, "credsStore": "desktop"}, f)
    assert R.load_credentials("reg.example", "x", path) is None
    with open(path, "w") as f:
        json.dump({"auths": {"reg.example": {"auth": "bm9jb2xvbg=="}}}, f)  # "nocolon"
    with pytest.raises(InvalidArgument, match="no ':' between user and password"):
        R.load_credentials("reg.example", "x", path)


def test_parse_challenge():
    assert R.parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull"'
    ) == (
        "bearer",
        {
            "realm": "https://auth.example/token",
            "service": "registry.example",
            "scope": "repository:a/b:pull",
        },
    )
    assert R.parse_challenge('Basic realm="x y"') == ("basic", {"realm": "x y"})


def test_loopback_names():
    for name in (
        "localhost",
        "localhost:5000",
        "127.0.0.1:5000",
        "127.3.2.1",
        "[::1]:5000",
        "a.localhost",
    ):
        assert R.is_loopback(name), name
    for name in ("registry.example", "10.0.0.1:5000", "docker.io", "localhost.example"):
        assert not R.is_loopback(name), name


def test_terminal_progress_bar():
    import io

    buf = io.StringIO()
    bar = R.TerminalProgress(buf, min_interval=0)
    bar.start("sha256:" + "ab" * 32, 2048)
    bar.advance(1024)
    bar.finish("done")
    text = buf.getvalue()
    assert "sha256:abababababab [###############               ] 1.0 KiB/2.0 KiB" in text
    assert text.endswith("sha256:abababababab done\n")


def test_docker_hub_endpoint_is_https_without_a_probe():
    client = R.RegistryClient("docker.io", "library/busybox")
    assert client._base_url() == "https://registry-1.docker.io"
    assert client.requests == 0  # no request was needed to decide


def test_choose_manifest_variants():
    index = {
        "manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "arm64"}},
            {
                "digest": "sha256:b",
                "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
            },
            {"digest": "sha256:c", "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }
    pick = R.choose_manifest
    assert pick(index, R.parse_platform("linux/arm64/v8"), "x")["digest"] == "sha256:a"
    assert pick(index, R.parse_platform("linux/arm/v7"), "x")["digest"] == "sha256:b"
    assert pick(index, R.parse_platform("amd64"), "x")["digest"] == "sha256:c"
    with pytest.raises(NotFound, match=r"no linux/arm/v6 image in x \(it has: linux/amd64, "):
        pick(index, R.parse_platform("linux/arm/v6"), "x")
    with pytest.raises(InvalidArgument, match="expected os/arch"):
        R.parse_platform("linux/")
