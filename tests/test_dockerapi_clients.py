"""docker-compose 1.29 and docker-py 5 (Debian's) against minirun's Docker API socket
(issue 15): a two-service project with a user network, a port published on 127.0.0.1
and a named volume, from `up -d` to `down -v` leaving nothing on the host; docker-py's
containers.run/list/logs/exec_run/remove and images.list.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import pytest
from dockerapitest import dockerapi  # noqa: F401 - the fixture
from dockerclients import DEBIAN_PYTHON, docker_compose, has_docker_py, host_links
from nettest import free_port
from ocitest import needs_root

pytestmark = [needs_root, pytest.mark.root]

COMPOSE_FILE = """\
version: "3.8"
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo web starting; mkdir -p /www; cat /data/greeting > /www/index.html; exec httpd -f -p 80 -h /www"]
    ports:
      - "127.0.0.1:${WEB_PORT}:80"
    networks: [front]
    volumes:
      - data:/data
    depends_on: [init]
  init:
    image: busybox
    command: ["sh", "-c", "echo hi from the volume > /data/greeting; echo init done"]
    networks: [front]
    volumes:
      - data:/data
  client:
    image: busybox
    command: ["sleep", "3600"]
    networks: [front]
    healthcheck:
      test: ["CMD", "test", "-d", "/proc/1"]
      interval: 1s
networks:
  front: {}
volumes:
  data: {}
"""


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                          check=True).stdout


def _get(url: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_compose_up_ps_logs_exec_down(dockerapi, tmp_path):  # noqa: F811
    compose = docker_compose()
    assert compose, "docker-compose is not installed: run scripts/install.sh"
    from minirun.network.manager import _root_tag

    port = free_port()
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)
    env = dict(dockerapi.client_env, WEB_PORT=str(port), COMPOSE_INTERACTIVE_NO_CLI="1")

    def dc(*args, check=True, timeout=180):
        proc = subprocess.run([compose, "-p", "mrobj", "--no-ansi", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)}: {proc.returncode}: "
                                 f"{proc.stdout}{proc.stderr}\n{dockerapi.logs()}")
        return proc

    d = dockerapi.docker
    made: list[str] = []
    try:
        up = dc("up", "-d")
        assert "Creating network \"mrobj_front\"" in up.stderr
        assert "Creating volume \"mrobj_data\"" in up.stderr
        made = d("ps", "-a", "-q", "--no-trunc", "--filter", "label=com.docker.compose."
                 "project=mrobj", check=True).stdout.split()
        assert len(made) == 3
        # every label filter must match (docker's; compose relies on it)
        web = d("ps", "-a", "-q", "--filter", "label=com.docker.compose.project=mrobj",
                "--filter", "label=com.docker.compose.service=web", check=True)
        assert len(web.stdout.split()) == 1
        net_id = d("network", "inspect", "-f", "{{.Id}}", "mrobj_front", check=True) \
            .stdout.strip()
        assert d("volume", "inspect", "-f", "{{.Name}}", "mrobj_data", check=True) \
            .stdout.strip() == "mrobj_data"

        # the published port answers on 127.0.0.1, with what init wrote to the volume
        assert _get(f"http://127.0.0.1:{port}/") == "hi from the volume\n"
        # up again: the network, volume and running containers are as compose wants them
        again = dc("up", "-d")
        assert "mrobj_web_1 is up-to-date" in again.stderr and "Creating" not in \
            again.stderr, again.stderr
        ps = dc("ps").stdout
        rows = {line.split()[0]: line for line in ps.splitlines()[2:] if line.strip()}
        assert set(rows) == {"mrobj_web_1", "mrobj_init_1", "mrobj_client_1"}, ps
        assert " Up " in rows["mrobj_web_1"] and f"127.0.0.1:{port}->80/tcp" in \
            rows["mrobj_web_1"]
        assert " Up " in rows["mrobj_client_1"]
        assert dockerapi.health("mrobj_client_1") == "healthy"
        assert "Up (healthy)" in dc("ps", "client").stdout
        assert "Exit 0" in rows["mrobj_init_1"]

        logs = dc("logs", "--no-color", "web", "init").stdout
        assert "web starting" in logs and "init done" in logs
        # the service name resolves on the project's network (the aliases compose gives)
        fetched = dc("exec", "-T", "client", "wget", "-qO-", "http://web/")
        assert fetched.stdout == "hi from the volume\n"
        failed = dc("exec", "-T", "client", "sh", "-c", "exit 3", check=False)
        assert failed.returncode == 3

        dc("down", "-v")
        assert d("ps", "-a", "-q", check=True).stdout == ""
        assert "mrobj_front" not in d("network", "ls", check=True).stdout
        assert "mrobj_data" not in d("volume", "ls", check=True).stdout
        assert not os.path.exists(os.path.join(dockerapi.env_engine.root, "volumes",
                                               "mrobj_data"))
        left = {f"mrbr{net_id[:10]}"} | {f"mr{cid[:12]}" for cid in made}
        assert not left & host_links()
        assert not {f"minirun-{cid[:12]}" for cid in made} & _netns()
        # no bridge of this engine's root is in use: its nftables table is gone
        assert f"minirun_{_root_tag(dockerapi.env_engine.root)}" not in _nft_tables()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        dc("down", "-v", check=False)
        for cid in made:
            d("rm", "-f", cid)


DOCKER_PY_SCRIPT = """
import json
import docker

client = docker.from_env(version="auto")
out = {}
out["run"] = client.containers.run("busybox", ["echo", "hello from docker-py"],
                                   remove=True).decode()
c = client.containers.run("busybox", ["sh", "-c", "echo started; exec sleep 300"],
                          detach=True, name="dpy", labels={"from": "docker-py"})
out["listed"] = [x.name for x in client.containers.list(filters={"label": "from=docker-py"})]
out["status"] = client.containers.get("dpy").status
for _ in range(100):
    logs = c.logs().decode()
    if logs:
        break
    import time
    time.sleep(0.1)
out["logs"] = logs
code, output = c.exec_run(["sh", "-c", "echo exec $((1 + 2)); exit 4"])
out["exec"] = [code, output.decode()]
c.remove(force=True)
out["after_remove"] = [x.name for x in client.containers.list(all=True)]
out["images"] = sorted(t for i in client.images.list() for t in i.tags)
try:
    client.containers.get("dpy")
except docker.errors.NotFound as e:
    out["not_found"] = str(e.explanation)
print(json.dumps(out))
"""


def test_docker_py(dockerapi):  # noqa: F811
    assert has_docker_py(), "python3-docker is not installed: run scripts/install.sh"
    proc = subprocess.run([DEBIAN_PYTHON, "-c", DOCKER_PY_SCRIPT], env=dockerapi.client_env,
                          capture_output=True, text=True, timeout=180, check=False)
    try:
        assert proc.returncode == 0, f"{proc.stderr}\n{dockerapi.logs()}"
        out = json.loads(proc.stdout)
        assert out["run"] == "hello from docker-py\n"
        assert out["listed"] == ["dpy"] and out["status"] == "running"
        assert out["logs"] == "started\n"
        assert out["exec"] == [4, "exec 3\n"], dockerapi.logs() + \
            dockerapi.env_engine.daemon_logs()
        assert out["after_remove"] == []
        assert "busybox:latest" in out["images"]
        assert "dpy" in out["not_found"]
    finally:
        dockerapi.docker("rm", "-f", "dpy")
