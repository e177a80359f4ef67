#!/usr/bin/env python3
"""`docker run --rm --network none busybox true` through minirun's Docker API service
against the same through podman's (`podman system service`, runtime runc): the same
docker CLI (Debian's 20.10, scripts/docker-cli.sh), the same image, the same run.

    sudo .venv/bin/python bench/dockerapi_bench.py            # hyperfine if installed
    sudo .venv/bin/python bench/dockerapi_bench.py -n 30 --no-hyperfine

Both services live in a temp dir: minirun's roots (MINIRUN_ROOT, MINIRUN_RUN_ROOT) and
podman's store (overlay), run root, tmpdir and events log, with CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF pointing there (as bench/run_bench.py keeps podman apart). podman's
containers go under the cgroup parent /minirun/podman-dockerapi-bench/<random> (the docker
CLI's --cgroup-parent); --network none for both (podman's bridge would make host links
outside minirun's names). The goal: minirun at most 0.5x podman's time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    CHECKOUT,
    VENV,
    BenchError,
    checked,
    kill_cgroup_procs,
    remove_tree,
    rotated,
    summary,
    timed,
)

GOAL = 0.5
CGROUP_PARENT = "/minirun/podman-dockerapi-bench"
CONTAINERS_CONF = """\
[containers]
log_driver = "k8s-file"
netns = "none"
# podman asks for RLIMIT_NOFILE 1048576, above this VM's hard limit without
# CAP_SYS_RESOURCE (bench/run_bench.py passes the same as --ulimit)
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
runtime = "runc"
"""


def python() -> str:
    path = os.path.join(VENV, "bin", "python")
    return path if os.access(path, os.X_OK) else sys.executable


def wait_socket(path: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{what} does not answer on {path}")
        time.sleep(0.1)


def podman_setup(base: str, driver: str) -> tuple[list[str], dict]:
    """podman's command line and environment against a private store in `base` (its
    containers.conf and storage.conf written there): for this bench and
    tests/test_dockerapi_podman.py."""
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "containers.conf"), "w") as f:
        # networks made through it (tests/test_dockerapi_podman_reference.py) stay in base
        f.write(CONTAINERS_CONF + f'\n[network]\nnetwork_config_dir = "{base}/networks"\n')
    os.makedirs(os.path.join(base, "networks"), exist_ok=True)
    with open(os.path.join(base, "storage.conf"), "w") as f:
        f.write(f'[storage]\ndriver = "{driver}"\ngraphroot = "{base}/storage"\n'
                f'runroot = "{base}/run"\n')
    env = dict(os.environ, CONTAINERS_CONF=f"{base}/containers.conf",
               CONTAINERS_STORAGE_CONF=f"{base}/storage.conf")
    cmd = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run",
           "--storage-driver", driver, "--tmpdir", f"{base}/tmp", "--cgroup-manager",
           "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
    return cmd, env


class Services:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.minirun_env = dict(os.environ, MINIRUN_ROOT=os.path.join(tmp, "mr-root"),
                                MINIRUN_RUN_ROOT=os.path.join(tmp, "mr-run"),
                                PYTHONPATH=CHECKOUT)
        self.minirun = [python(), "-m", "minirun.cli"]
        self.podman, self.podman_env = podman_setup(os.path.join(tmp, "podman"), "overlay")
        self.cgroup_parent = f"{CGROUP_PARENT}/{secrets.token_hex(4)}"

    def start(self) -> dict[str, str]:
        tarball = os.path.join(self.tmp, "busybox.tar")
        subprocess.run([os.path.join(CHECKOUT, "rootfs", "build.sh"), "--tar", tarball],
                       check=True, stdout=subprocess.DEVNULL)
        checked(self.minirun + ["import", "--cmd", '["sh"]', tarball, "busybox:latest"],
                self.minirun_env, 300, "minirun import")
        # the same rootfs tarball, imported by each under the name the docker CLI's
        # "busybox" means
        checked(self.podman + ["import", "-q", "--change", "CMD sh", tarball,
                               "docker.io/library/busybox:latest"], self.podman_env, 300,
                "podman import")
        sockets = {"minirun": os.path.join(self.tmp, "minirun.sock"),
                   "podman": os.path.join(self.tmp, "podman.sock")}
        log = open(os.path.join(self.tmp, "services.log"), "ab")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            self.minirun + ["system", "service", "--socket", sockets["minirun"]],
            env=self.minirun_env, stdout=log, stderr=log))
        wait_socket(sockets["minirun"], self.procs[-1], "minirun system service")
        self.procs.append(subprocess.Popen(
            self.podman + ["system", "service", "--time", "0", f"unix://{sockets['podman']}"],
            env=self.podman_env, stdout=log, stderr=log))
        wait_socket(sockets["podman"], self.procs[-1], "podman system service")
        return sockets

    def stop(self) -> list[str]:
        problems = []
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for args in (("rm", "--all", "--force", "--time", "0"), ("rmi", "--all", "--force")):
            r = timed(self.podman + list(args), self.podman_env, 120)
            if r["code"] != 0:
                problems.append(f"podman {' '.join(args)}: {r['stderr']}")
        containers = os.path.join(self.minirun_env["MINIRUN_ROOT"], "containers")
        for cid in sorted(os.listdir(containers)) if os.path.isdir(containers) else []:
            r = timed(self.minirun + ["rm", "--force", cid], self.minirun_env, 120)
            if r["code"] != 0:
                problems.append(f"minirun rm {cid}: {r['stderr']}")
        for name in ("keeper", "daemon"):  # the service started them in the temp run root
            try:
                with open(os.path.join(self.minirun_env["MINIRUN_RUN_ROOT"],
                                       f"{name}.pid")) as f:
                    os.kill(int(f.read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        problems += remove_cgroup(self.cgroup_parent)
        return problems


def remove_cgroup(rel: str) -> list[str]:
    """The podman containers' cgroup parent, in every hierarchy (runc makes it in the
    v1 ones and in the empty cgroup2 too), processes first."""
    left = []
    with open("/proc/self/mountinfo") as f:
        tops = [line.split()[4] for line in f if " - cgroup " in line or " - cgroup2 " in line]
    for top in tops:
        path = top + rel
        if not os.path.isdir(path):
            continue
        kill_cgroup_procs(path)
        for d, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
            try:
                os.rmdir(d)
            except OSError:
                left.append(d)
        try:
            os.rmdir(os.path.dirname(path))  # /minirun/podman-dockerapi-bench, if empty
        except OSError:
            pass
    return left


def measure(cli: str, sockets: dict[str, str], cgroup_parent: str, n: int, warmup: int,
            use_hyperfine: bool, tmp: str) -> dict[str, dict]:
    config = tempfile.mkdtemp(dir=tmp)
    argv = {"minirun": [cli, "run", "--rm", "--network", "none", "busybox", "true"],
            "podman": [cli, "run", "--rm", "--network", "none", "--cgroup-parent",
                       cgroup_parent, "busybox", "true"]}
    envs = {name: dict(os.environ, DOCKER_HOST=f"unix://{path}", DOCKER_CONFIG=config)
            for name, path in sockets.items()}
    for name, command in argv.items():  # each must work before it is timed
        r = timed(command, envs[name], 120)
        if r["code"] != 0:
            raise BenchError(f"{name}: {' '.join(command[1:])}: exit {r['code']}: "
                             f"{r['stderr']}")
    hyperfine = shutil.which("hyperfine") if use_hyperfine else None
    if hyperfine:
        out = os.path.join(tmp, "hyperfine.json")
        cmds = [" ".join(["env", f"DOCKER_HOST=unix://{sockets[name]}",
                          f"DOCKER_CONFIG={config}", *argv[name]]) for name in argv]
        subprocess.run([hyperfine, "-N", "--warmup", str(warmup), "--runs", str(n),
                        "--export-json", out, "-n", "minirun", cmds[0], "-n", "podman",
                        cmds[1]], check=True, stdout=sys.stderr)
        with open(out) as f:
            results = json.load(f)["results"]
        return {r["command"]: summary(r["times"]) for r in results}
    samples: dict[str, list[float]] = {name: [] for name in argv}
    for i in range(warmup + n):
        for name in rotated(list(argv), i):
            r = timed(argv[name], envs[name], 120)
            if r["code"] != 0:
                raise BenchError(f"{name} failed: {r['stderr']}")
            if i >= warmup:
                samples[name].append(r["elapsed"])
    return {name: summary(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-hyperfine", action="store_true", help="time the runs here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("dockerapi_bench: run as root", file=sys.stderr)
        return 2
    cli = subprocess.run([os.path.join(CHECKOUT, "scripts", "docker-cli.sh")], check=True,
                         capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="minirun-dockerapi-bench.")
    services = Services(tmp)
    code = 0
    try:
        sockets = services.start()
        result = measure(cli, sockets, services.cgroup_parent, args.iterations, args.warmup,
                         not args.no_hyperfine, tmp)
        mr, pm = result["minirun"], result["podman"]
        print(f"docker run --rm --network none busybox true  (docker CLI 20.10, "
              f"{mr['n']} runs each{', hyperfine' if shutil.which('hyperfine') and not args.no_hyperfine else ''})")
        for name, s in result.items():
            print(f"  {name:8} median {s['median'] * 1000:7.1f} ms   p90 "
                  f"{s['p90'] * 1000:7.1f} ms")
        ratio = mr["median"] / pm["median"]
        print(f"  minirun / podman: {ratio:.2f}x  (goal <= {GOAL}x: "
              f"{'met' if ratio <= GOAL else 'not met'})")
    except BenchError as e:
        print(f"dockerapi_bench: {e}", file=sys.stderr)
        code = 1
    finally:
        problems = services.stop()
        problems += remove_tree(tmp)
        for problem in problems:
            print(f"dockerapi_bench: cleanup: {problem}", file=sys.stderr)
    return code or (1 if problems else 0)


if __name__ == "__main__":
    sys.exit(main())
