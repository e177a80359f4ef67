"""`minirun cri` on a private engine (tests/enginetest.py's EngineEnv: temporary roots,
daemon and keeper stopped by pid at the end) with an empty registries config and auth
file, for the ImageService and stats tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from enginetest import EngineEnv
from ocitest import REPO
from registry import auth_file

from minirun.cri.api import api_pb2 as pb
from minirun.cri.api import api_pb2_grpc as pb_grpc


class CriImagesEnv(EngineEnv):
    """A private engine (with busybox:latest) and `minirun cri` serving it on a socket in
    its top dir; the registries config and auth file are empty files of this test."""

    def __init__(self, top: str) -> None:
        super().__init__(top)
        self.socket = os.path.join(top, "cri.sock")
        cni = os.path.join(top, "cni")
        os.makedirs(cni)
        registries = os.path.join(top, "registries.json")
        with open(registries, "w") as f:
            f.write("{}")
        self.env.update(MINIRUN_CNI_CONF_DIR=cni, MINIRUN_REGISTRIES_CONF=registries,
                        REGISTRY_AUTH_FILE=auth_file(os.path.join(top, "auth.json"), {}))
        self.proc: subprocess.Popen | None = None

    def import_busybox(self) -> None:
        """busybox:latest from rootfs/build.sh's tarball, into the store before start()."""
        from minirun.image.archive import import_rootfs
        from minirun.image.store import ImageStore

        tar = os.path.join(self.top, "busybox.tar")
        subprocess.run([os.path.join(REPO, "rootfs", "build.sh"), "--tar", tar], check=True,
                       stdout=subprocess.DEVNULL)
        with ImageStore(self.root) as store:
            import_rootfs(store, tar, "busybox:latest")

    def start(self) -> None:
        self.log = open(os.path.join(self.top, "cri.log"), "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minirun.cli", "cri", "--root", self.root, "--run-root",
             self.run_root, "--cri-socket", self.socket, "--no-default-cni"],
            env=self.env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"minirun cri exited: {self.cri_log()}"
            try:
                with grpc.insecure_channel(f"unix:{self.socket}") as ch:
                    pb_grpc.ImageServiceStub(ch).ImageFsInfo(pb.ImageFsInfoRequest(), timeout=2)
                return
            except grpc.RpcError:
                assert time.monotonic() < deadline, f"minirun cri not serving: {self.cri_log()}"
                time.sleep(0.1)

    def cri_log(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def teardown(self) -> list[str]:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.log.close()
        return super().teardown()
