"""A private engine (data root, run root) with busybox:latest imported, for the engine and
daemon tests; on teardown every container is removed, the daemon and keeper stopped by
pid, and no mount is left under the roots."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from ocitest import REPO


class EngineEnv:
    def __init__(self, top: str) -> None:
        self.top = top
        self.root = os.path.join(top, "lib")
        self.run_root = os.path.join(top, "run")
        self.env = dict(os.environ, MINIRUN_ROOT=self.root, MINIRUN_RUN_ROOT=self.run_root)

    def __call__(self, *args, timeout: float = 120, check: bool = False,
                 **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "minirun.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"minirun {' '.join(args)}: {proc.returncode}: {proc.stderr}")
        return proc

    def pid_of(self, name: str) -> int | None:
        try:
            with open(os.path.join(self.run_root, f"{name}.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def stop_process(self, name: str) -> None:
        pid = self.pid_of(name)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def daemon_logs(self) -> str:
        out = []
        for name in ("daemon.log", "keeper.log"):
            try:
                with open(os.path.join(self.run_root, name)) as f:
                    out.append(f"--- {name}\n" + f.read()[-4000:])
            except OSError:
                pass
        return "\n".join(out)

    def teardown(self) -> list[str]:
        for cid in self("ps", "-a", "-q").stdout.split():
            self("rm", "-f", cid)
        # the keeper first: it would start another daemon; the daemon exits with it
        self.stop_process("keeper")
        self.stop_process("daemon")
        time.sleep(0.2)
        left = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if self.top in line:
                    left.append(line.split()[4])
        for point in reversed(left):
            subprocess.run(["umount", "-l", point])
        subprocess.run(["rm", "-rf", "--one-file-system", self.top])
        return left


def engine_with_busybox(top: str):
    """An EngineEnv in top with busybox:latest imported; torn down (and checked: no mount
    left) when the generator is closed. For fixtures to `yield from`."""
    env = EngineEnv(top)
    try:
        tar = os.path.join(top, "busybox.tar")
        subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", tar], check=True,
                       stdout=subprocess.DEVNULL)
        from minirun.image.archive import import_rootfs
        from minirun.image.store import ImageStore
        import_rootfs(ImageStore(env.root), tar, "busybox:latest")
        yield env
    finally:
        left = env.teardown()
    assert not left, f"mounts left under the engine roots: {left}"


def engine_serving_metrics(top: str):
    """engine_with_busybox whose daemon.json asks for metrics on a free loopback port
    (env.addr): the daemon `run -d` starts on demand serves them, and the one the keeper
    brings back. For fixtures to `yield from`."""
    import json

    from nettest import free_port

    gen = engine_with_busybox(top)
    env = next(gen)
    env.addr = f"127.0.0.1:{free_port()}"
    os.makedirs(env.root, exist_ok=True)
    with open(os.path.join(env.root, "daemon.json"), "w") as f:
        json.dump({"metrics-addr": env.addr}, f)
    yield env
    yield from gen


def searchable_engine(prefix: str):
    """engine_with_busybox under a 0755 directory others may search: with --userns auto
    the container's root (an unprivileged host uid) must reach its rootfs, and pytest's
    temporary directories are 0700. MINIRUN_USERNS_RANGE is not set for it."""
    import tempfile

    top = tempfile.mkdtemp(prefix=prefix)
    os.chmod(top, 0o755)
    gen = engine_with_busybox(top)
    env = next(gen)
    env.env.pop("MINIRUN_USERNS_RANGE", None)
    yield env
    yield from gen


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    yield from engine_with_busybox(str(tmp_path_factory.mktemp("engine")))
