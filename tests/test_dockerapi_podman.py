"""The same docker CLI commands against minirun's Docker API service and podman's
(`podman system service`, the reference compat service): the same output and exit codes.

podman is kept apart from the host as in tests/test_podman.py: its store (vfs), run root,
tmpdir and events log in a temp dir, CONTAINERS_CONF / CONTAINERS_STORAGE_CONF written
there, runtime runc, the cgroupfs manager with the docker CLI's --cgroup-parent under
/minirun/, no network (netns "none" in its containers.conf and --network none on both
sides: podman's bridge would make host links outside minirun's names).

Compared where podman 4.3 answers as docker does. Seen here where it does not (so not
compared): `run --rm` of a container that exits 3 exits 0 under podman, and `run --rm` of
a missing command exits 1 ("unable to upgrade to tcp, received 409") where docker exits 127.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from clients import remove_cgroup_tree, remove_empty_parent_cgroup, remove_tree, run_token
from dockerapitest import dockerapi, docker_cli  # noqa: F401 - the fixture
from ocitest import REPO

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]

CONTAINERS_CONF = """\
[containers]
log_driver = "k8s-file"
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
runtime = "runc"
"""


class PodmanService:
    def __init__(self, base: str) -> None:
        self.base = base
        self.socket = os.path.join(base, "podman.sock")
        self.cgroup_parent = f"/minirun/dockerapi-podman-test/{run_token()}"
        with open(os.path.join(base, "containers.conf"), "w") as f:
            # networks made through it (test_dockerapi_podman_reference.py) stay in base
            f.write(CONTAINERS_CONF + f'\n[network]\nnetwork_config_dir = "{base}/networks"\n')
        os.makedirs(os.path.join(base, "networks"))
        with open(os.path.join(base, "storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/storage"\n'
                    f'runroot = "{base}/run"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=f"{base}/containers.conf",
                        CONTAINERS_STORAGE_CONF=f"{base}/storage.conf")
        self.cmd = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run",
                    "--storage-driver", "vfs", "--tmpdir", f"{base}/tmp",
                    "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                    "--runtime", "runc"]
        tar = os.path.join(base, "busybox.tar")
        subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", tar], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(self.cmd + ["import", "-q", tar, "docker.io/library/busybox:latest"],
                       env=self.env, check=True, capture_output=True)
        self.log = open(os.path.join(base, "service.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd + ["system", "service", "--time", "0",
                                                 f"unix://{self.socket}"],
                                     env=self.env, stdout=self.log, stderr=self.log)
        self.client_env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}",
                               DOCKER_CONFIG=os.path.join(base, "docker-config"))
        self.cli = docker_cli()
        deadline = time.monotonic() + 60
        while self.docker("version").returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                "podman system service did not start"
            time.sleep(0.2)

    def docker(self, *args, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([self.cli, *args], env=self.client_env, capture_output=True,
                              text=True, timeout=120,
                              stdin=None if "input" in kw else subprocess.DEVNULL, **kw)

    def close(self) -> list[str]:
        self.docker("rm", "-f", *self.docker("ps", "-aq").stdout.split())
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(self.cmd + ["rm", "--all", "--force", "--time", "0"], env=self.env,
                       capture_output=True)
        subprocess.run(self.cmd + ["rmi", "--all", "--force"], env=self.env,
                       capture_output=True)
        left = remove_cgroup_tree(self.cgroup_parent)
        remove_empty_parent_cgroup(os.path.dirname(self.cgroup_parent))
        return left


@pytest.fixture(scope="module")
def podman_api():
    base = tempfile.mkdtemp(prefix="minirun-dockerapi-podman-")
    service = None
    try:
        service = PodmanService(base)
        yield service
    finally:
        left = service.close() if service is not None else []
        remove_tree(base)
        assert not left, f"cgroups left: {left}"


def both(dockerapi, podman_api, run_args_at: int | None, *args, **kw):
    """The command against each: (minirun's, podman's). `run_args_at`: where in args to
    put podman's cgroup parent (after `run`), None for none."""
    pm_args = list(args)
    if run_args_at is not None:
        pm_args[run_args_at:run_args_at] = ["--cgroup-parent", podman_api.cgroup_parent]
    return dockerapi.docker(*args, **kw), podman_api.docker(*pm_args, **kw)


def same(a: subprocess.CompletedProcess, b: subprocess.CompletedProcess) -> tuple:
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout), (a, b)
    return a.returncode, a.stdout, a.stderr


def same_id(a: subprocess.CompletedProcess, b: subprocess.CompletedProcess) -> None:
    """`run -d`: each prints its new container's full id."""
    for out in (a, b):
        assert out.returncode == 0 and len(out.stdout.strip()) == 64, (a, b)


def test_run_detached_wait_logs_ps_inspect_match_podman(dockerapi, podman_api):
    script = "echo a; echo b >&2; exit 4"
    same_id(*both(dockerapi, podman_api, 1, "run", "-d", "--network", "none", "--name", "cmp1",
                  "busybox", "sh", "-c", script))
    assert same(*both(dockerapi, podman_api, None, "wait", "cmp1"))[:2] == (0, "4\n")
    mr, pm = both(dockerapi, podman_api, None, "logs", "cmp1")
    assert same(mr, pm)[:2] == (0, "a\n") and mr.stderr == pm.stderr == "b\n"
    assert same(*both(dockerapi, podman_api, None, "ps", "-a", "--filter", "name=cmp1",
                      "--format", "{{.Names}} {{.State}}"))[1] == "cmp1 exited\n"
    assert same(*both(dockerapi, podman_api, None, "inspect", "-f",
                      "{{.State.Status}} {{.State.ExitCode}} {{.Name}} {{.Config.Cmd}}",
                      "cmp1"))[1] == f"exited 4 /cmp1 [sh -c {script}]\n"
    same(*both(dockerapi, podman_api, None, "rm", "cmp1"))


def test_exec_and_stop_exit_codes_match_podman(dockerapi, podman_api):
    same_id(*both(dockerapi, podman_api, 1, "run", "-d", "--network", "none", "--name",
                  "cmp2", "busybox", "sleep", "300"))
    try:
        assert same(*both(dockerapi, podman_api, None, "exec", "cmp2", "sh", "-c",
                          "echo x; exit 6"))[:2] == (6, "x\n")
        assert same(*both(dockerapi, podman_api, None, "exec", "cmp2", "nosuch"))[0] == 127
        assert same(*both(dockerapi, podman_api, None, "exec", "-i", "cmp2", "cat",
                          input="in\n"))[:2] == (0, "in\n")
        same(*both(dockerapi, podman_api, None, "stop", "-t", "1", "cmp2"))
        assert same(*both(dockerapi, podman_api, None, "inspect", "-f",
                          "{{.State.ExitCode}} {{.State.Running}}", "cmp2"))[1] == \
            "137 false\n"
        mr, pm = both(dockerapi, podman_api, None, "kill", "cmp2")
        assert mr.returncode == pm.returncode == 1
    finally:
        both(dockerapi, podman_api, None, "rm", "-f", "cmp2")


def test_run_foreground_output_matches_podman(dockerapi, podman_api):
    assert same(*both(dockerapi, podman_api, 1, "run", "--network", "none", "--name", "cmp3",
                      "busybox", "sh", "-c", "echo one; echo two"))[:2] == (0, "one\ntwo\n")
    mr, pm = both(dockerapi, podman_api, 1, "run", "-i", "--rm", "--network", "none",
                  "busybox", "tr", "a-z", "A-Z", input="quiet\n")
    assert same(mr, pm)[:2] == (0, "QUIET\n")
    both(dockerapi, podman_api, None, "rm", "-f", "cmp3")
