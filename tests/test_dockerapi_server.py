"""The Docker API server: socket, version negotiation, docker's errors (issue 15)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

from dockerapitest import dockerapi  # noqa: F401 - the fixture


def test_ping_says_the_api_version(dockerapi):
    for method in ("GET", "HEAD"):
        status, headers, body = dockerapi.http(method, "/_ping")
        assert status == 200
        assert headers["api-version"] == "1.41"
        assert headers["ostype"] == "linux"
        assert headers["docker-experimental"] == "false"
        assert body == (b"OK" if method == "GET" else b"")


def test_version_and_its_prefixes(dockerapi):
    for path in ("/version", "/v1.41/version", "/v1.24/version"):
        status, _, body = dockerapi.http("GET", path)
        assert status == 200, body
        doc = json.loads(body)
        assert doc["ApiVersion"] == "1.41" and doc["MinAPIVersion"] == "1.24"
    status, _, body = dockerapi.http("GET", "/v1.42/version")
    assert status == 400
    assert json.loads(body) == {"message": "client version 1.42 is too new. Maximum "
                                           "supported API version is 1.41"}
    status, _, body = dockerapi.http("GET", "/v1.23/version")
    assert status == 400 and "too old" in json.loads(body)["message"]


def test_unknown_endpoints_are_501_with_docker_error_json(dockerapi):
    status, headers, body = dockerapi.http("POST", "/v1.41/swarm/init", {})
    assert status == 501
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["message"] == "minirun does not implement POST /swarm/init"


def test_socket_is_root_only_and_a_second_server_refuses(dockerapi):
    st = os.stat(dockerapi.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0 and st.st_gid == 0
    proc = subprocess.run([sys.executable, "-m", "minirun.cli", "system", "service",
                           "--socket", dockerapi.socket], env=dockerapi.env_engine.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"minirun: error: another server is serving "
                                   f"{dockerapi.socket} (pid {dockerapi.proc.pid})")
    assert dockerapi.http("GET", "/_ping")[0] == 200  # the first one still serves


def test_a_stale_socket_file_is_replaced(dockerapi, tmp_path):
    from dockerapitest import DockerService

    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as s:  # bound, then nobody listens: a dead server's
        s.bind(str(path))
    service = DockerService(dockerapi.env_engine, top=str(tmp_path))
    try:
        assert service.http("GET", "/_ping")[0] == 200
    finally:
        service.stop()
    assert not path.exists()


def test_docker_version_and_info_through_the_cli(dockerapi):
    out = dockerapi.docker("version", "--format", "{{.Server.APIVersion}} "
                           "{{.Server.MinAPIVersion}} {{.Client.APIVersion}}", check=True)
    assert out.stdout.split() == ["1.41", "1.24", "1.41"]
    out = dockerapi.docker("info", "--format", "{{.OSType}} {{.Images}}", check=True)
    assert out.stdout.split() == ["linux", "1"]


def test_socket_activation(dockerapi, tmp_path):
    """systemd's way (contrib/systemd/minirun-docker.socket): the socket made and passed
    as fd 3 with LISTEN_FDS; the server serves it and leaves it in place when it ends."""
    import shutil
    import signal
    import time

    from dockerapitest import parse_response

    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate (systemd) is needed"
    path = str(tmp_path / "activated.sock")
    env = dict(dockerapi.env_engine.env, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([activate, "-l", path, "-E", "MINIRUN_ROOT", "-E",
                             "MINIRUN_RUN_ROOT", "-E", "PYTHONPATH", sys.executable, "-m",
                             "minirun.cli", "system", "service", "--socket", path],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(path)
            s.sendall(b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        status, headers, body = parse_response(data)
        assert status == 200 and json.loads(body)["ApiVersion"] == "1.41"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert os.path.exists(path), "systemd's socket must stay for the next activation"
