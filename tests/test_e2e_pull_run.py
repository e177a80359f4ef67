"""A user's first session, end to end through the command line only: an application image
(the busybox rootfs plus an application layer, its config setting Entrypoint, Cmd, Env,
WorkingDir, User, StopSignal and ExposedPorts) is pushed to a real registry on 127.0.0.1
(Debian's docker-registry, fed by skopeo), then `minirun pull`, `images`, `run` with and
without docker's overriding flags, a detached run stopped with the image's stop signal,
`rmi` refused while a container uses the image, and a pull of a tag the registry lacks.
Each check is on what the user sees: exit statuses, stdout, stderr, `images`, `logs`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
import urllib.request

import pytest
from enginetest import EngineEnv
from ocitest import REPO, needs_root, wait_for
from registry import Layout, Registry, skopeo_copy

pytestmark = [needs_root, pytest.mark.root]

ENTRYPOINT_SCRIPT = """\
#!/bin/sh
# the image's StopSignal is SIGUSR1: `minirun stop` must send that, not SIGTERM
trap 'echo "got SIGUSR1"; exit 7' USR1
trap 'echo "got SIGTERM"; exit 9' TERM
echo "args: $*"
echo "greeting: $GREETING"
echo "cwd: $(pwd)"
echo "uid: $(id -u)"
if [ "$1" = serve ]; then
    echo ready
    while :; do sleep 0.1; done
fi
"""

IMAGE_CONFIG = {
    "Entrypoint": ["/app/entry.sh"],
    "Cmd": ["hello", "world"],
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "GREETING=hello from the image"],
    "WorkingDir": "/srv/data",
    "User": "1000",  # `app` in the busybox rootfs's /etc/passwd
    "StopSignal": "SIGUSR1",
    "ExposedPorts": {"8080/tcp": {}},
}


def app_layer() -> bytes:
    """The application layer: the entrypoint script and the working directory (owned by
    the image's user, as a Dockerfile's WORKDIR after USER would leave it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, uid in (("app", 0), ("srv", 0), ("srv/data", 1000)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
            info.mtime = 1700000000
            tar.addfile(info)
        script = ENTRYPOINT_SCRIPT.encode()
        info = tarfile.TarInfo("app/entry.sh")
        info.size, info.mode, info.mtime = len(script), 0o755, 1700000000
        tar.addfile(info, io.BytesIO(script))
    return buf.getvalue()


def push_app_image(workdir: str, reg: Registry) -> str:
    """Build the two-layer image as an OCI layout and push it as app:1.0; returns the
    image id (its config digest)."""
    rootfs_tar = os.path.join(workdir, "busybox.tar")
    subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", rootfs_tar],
                   check=True, capture_output=True, timeout=300)
    layout = Layout(os.path.join(workdir, "layout"))
    with open(rootfs_tar, "rb") as f:
        raw_layers = [f.read(), app_layer()]
    descs, diff_ids = [], []
    for raw in raw_layers:
        blob = gzip.compress(raw, mtime=0)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": layout.blob(blob), "size": len(blob)})
    config = json.dumps({
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "config": IMAGE_CONFIG,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "busybox rootfs"}, {"created_by": "COPY entry.sh /app/"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": layout.blob(config), "size": len(config)},
        "layers": descs,
    }, sort_keys=True).encode()
    layout.tag("1.0", layout.blob(manifest), "application/vnd.oci.image.manifest.v1+json")
    skopeo_copy(f"oci:{layout.path}:1.0", f"docker://{reg.host}/app:1.0", "--preserve-digests")
    return "sha256:" + hashlib.sha256(config).hexdigest()


class Session:
    def __init__(self, env: EngineEnv, reg: Registry, image_id: str) -> None:
        self.env = env
        self.reg = reg
        self.image_id = image_id
        self.image = f"{reg.host}/app:1.0"

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.env(*args, timeout=timeout)

    def image_rows(self) -> list[list[str]]:
        """`minirun images` without its header, split into columns."""
        proc = self("images")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert lines[0].split()[:4] == ["REPOSITORY", "TAG", "IMAGE", "ID"]
        return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    assert os.path.exists("/usr/bin/docker-registry"), (
        "docker-registry is not installed: run scripts/install.sh")
    top = str(tmp_path_factory.mktemp("e2e"))
    workdir = os.path.join(top, "registry")
    os.mkdir(workdir)
    os.mkdir(os.path.join(top, "engine"))  # see test_first_pull_into_a_root_whose_parent_is_missing
    env = EngineEnv(os.path.join(top, "engine"))
    reg = Registry(workdir, os.path.join(workdir, "storage"))
    try:
        reg.start()
        image_id = push_app_image(workdir, reg)
        yield Session(env, reg, image_id)
    finally:
        reg.stop()
        left = env.teardown()
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)
        assert not left, f"mounts left under the engine roots: {left}"


# --- the session, in the order a user goes -----------------------------------------------

def test_pull_of_an_unknown_tag_fails_with_one_line_and_no_image(session):
    before = session("images", "-q", "--no-trunc").stdout
    proc = session("pull", f"{session.reg.host}/app:nope")
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("minirun: error: ") and \
        f"{session.reg.host}/app:nope" in lines[0] and "not found" in lines[0], lines
    assert proc.stdout == ""
    assert session("images", "-q", "--no-trunc").stdout == before


def test_pull_then_images_lists_it(session):
    proc = session("pull", session.image)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == session.image_id
    rows = session.image_rows()
    assert [r[:3] for r in rows] == [[f"{session.reg.host}/app", "1.0",
                                      session.image_id[7:19]]]
    inspected = json.loads(session("image", "inspect", session.image).stdout)[0]
    assert inspected["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert inspected["Config"]["StopSignal"] == "SIGUSR1"


def test_run_uses_entrypoint_cmd_env_workdir_and_user(session):
    proc = session("run", "--rm", session.image)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["args: hello world", "greeting: hello from the image",
                                        "cwd: /srv/data", "uid: 1000"]


def test_arguments_replace_cmd_only(session):
    proc = session("run", "--rm", session.image, "other", "args")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "args: other args"


def test_entrypoint_flag_drops_the_image_cmd(session):
    proc = session("run", "--rm", "--entrypoint", "/bin/sh", session.image, "-c",
                   'echo "$0|$*|$(pwd)|$(id -u)"')
    assert proc.returncode == 0, proc.stderr
    # neither the image's entrypoint nor its Cmd ("hello world"); WorkingDir and User stay
    assert proc.stdout == "/bin/sh||/srv/data|1000\n"


def test_user_and_workdir_flags_override_the_image(session):
    proc = session("run", "--rm", "-u", "0", session.image)
    assert proc.returncode == 0, proc.stderr
    assert "uid: 0" in proc.stdout.splitlines()
    proc = session("run", "--rm", "-w", "/tmp", session.image)
    assert proc.returncode == 0, proc.stderr
    assert "cwd: /tmp" in proc.stdout.splitlines()
    assert "uid: 1000" in proc.stdout.splitlines()
    proc = session("run", "--rm", "-e", "GREETING=from the user", session.image)
    assert proc.returncode == 0, proc.stderr
    assert "greeting: from the user" in proc.stdout.splitlines()


def test_stop_sends_the_image_stop_signal(session):
    proc = session("run", "-d", "--name", "svc", session.image, "serve")
    assert proc.returncode == 0, proc.stderr
    assert wait_for(lambda: "ready" in session("logs", "svc").stdout, timeout=30), \
        session("logs", "svc")
    started = time.monotonic()
    proc = session("stop", "svc")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 8  # the trap ran: no wait for the SIGKILL timeout
    logs = session("logs", "svc").stdout.splitlines()
    assert logs[-1] == "got SIGUSR1", logs
    assert "got SIGTERM" not in logs
    inspected = json.loads(session("inspect", "svc").stdout)[0]
    assert inspected["State"]["ExitCode"] == 7


def test_publish_all_publishes_the_image_exposed_port(session):
    proc = session("run", "-d", "-P", "--name", "exposed", "--entrypoint", "/bin/sh",
                   session.image, "-c", "mkdir -p /tmp/w && echo exposed > /tmp/w/index.html"
                   " && exec httpd -f -p 8080 -h /tmp/w")
    assert proc.returncode == 0, proc.stderr
    try:
        ports = json.loads(session("inspect", "exposed").stdout)[0]["NetworkSettings"]["Ports"]
        assert list(ports) == ["8080/tcp"]
        url = f"http://127.0.0.1:{ports['8080/tcp'][0]['HostPort']}/"
        body = None
        deadline = time.monotonic() + 15
        while body is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                assert time.monotonic() < deadline, f"nothing answered on {url}"
                time.sleep(0.1)
        assert body == "exposed\n"
    finally:
        session("rm", "-f", "exposed")


def test_rmi_is_refused_while_a_container_uses_the_image(session):
    cid = json.loads(session("inspect", "svc").stdout)[0]["Id"]
    proc = session("rmi", session.image)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"minirun: error: image {session.image} is in use by container {cid[:12]}"]
    assert [r[:2] for r in session.image_rows()] == [[f"{session.reg.host}/app", "1.0"]]

    assert session("rm", "svc").returncode == 0
    proc = session("rmi", session.image)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"Untagged: {session.image}",
                                        f"Deleted: {session.image_id}"]
    assert session.image_rows() == []
    # --pull never: by default (missing) run would pull it again, as docker does
    proc = session("run", "--rm", "--pull", "never", session.image)
    assert proc.returncode == 125
    assert len(proc.stderr.strip().splitlines()) == 1


def test_first_pull_into_a_root_whose_parent_is_missing(session, tmp_path):
    fresh = EngineEnv(str(tmp_path / "not-there-yet"))
    proc = fresh("pull", f"{session.reg.host}/app:nope")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("minirun: error: ")
