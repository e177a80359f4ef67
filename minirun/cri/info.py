"""Version, Status, RuntimeConfig and UpdateRuntimeConfig: what kubelet asks first.

A mixin of the RuntimeService impl (it needs no engine). Status reads the CNI
configuration each time it is asked, so a conflist that appears later (a cluster's CNI
installing itself, as flannel and calico do) turns NetworkReady true without a restart.
"""

from __future__ import annotations

import json
import os
import threading

from .. import __version__
from .api import api_pb2 as pb

RUNTIME_NAME = "minirun"
# the version of the kubelet runtime API message itself, as containerd answers
KUBELET_API_VERSION = "0.1.0"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
# libcni's loader reads these
CNI_CONF_SUFFIXES = (".conf", ".conflist", ".json")


def cni_conf_dir() -> str:
    return os.environ.get("MINIRUN_CNI_CONF_DIR") or DEFAULT_CNI_CONF_DIR


def probe_cni() -> tuple[bool, str]:
    """(ready, why not): ready when the conf dir holds a network configuration (a JSON
    object with "type" or "plugins"); used when minirun.pods has no cni_status."""
    conf_dir = cni_conf_dir()
    try:
        names = sorted(os.listdir(conf_dir))
    except OSError as e:
        return False, f"no network config in {conf_dir}: {e.strerror}"
    for name in names:
        if not name.endswith(CNI_CONF_SUFFIXES):
            continue
        try:
            with open(os.path.join(conf_dir, name), "rb") as f:
                conf = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(conf, dict) and ("plugins" in conf or "type" in conf):
            return True, ""
    return False, f"no network config found in {conf_dir}"


def network_status() -> tuple[bool, str, str]:
    """(ready, reason, message) of NetworkReady: minirun.pods.cni_status() where that
    exists (it also checks the plugins), else probe_cni()."""
    try:
        from ..pods import cni_status
    except ImportError:
        ready, why = probe_cni()
    else:
        status = cni_status()
        if len(status) == 3:
            return status
        ready, why = status
    if ready:
        return True, "", ""
    return False, "NetworkPluginNotReady", f"network plugin is not ready: {why}"


class InfoMixin:
    """Version, Status, RuntimeConfig, UpdateRuntimeConfig (grpc servicer signatures).

    UpdateRuntimeConfig records kubelet's pod CIDR in `self.pod_cidr` (kubelet sends it
    when it manages the node's CIDR; minirun's CNI config keeps its own subnet)."""

    pod_cidr = ""
    _info_lock = threading.Lock()

    def Version(self, request, context):
        return pb.VersionResponse(
            version=KUBELET_API_VERSION, runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=getattr(context, "cri_api", "v1"))

    def Status(self, request, context):
        ready, reason, message = network_status()
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=True),
            pb.RuntimeCondition(type="NetworkReady", status=ready, reason=reason,
                                message=message),
        ]
        info = {}
        if request.verbose:
            info["config"] = json.dumps({
                "runtime": RUNTIME_NAME, "version": __version__,
                "cgroupDriver": "cgroupfs", "cniConfDir": cni_conf_dir(),
                "podCIDR": self.pod_cidr,
                "root": getattr(getattr(self, "engine", None), "root", None),
                "runRoot": getattr(getattr(self, "engine", None), "run_root", None)})
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions), info=info,
            runtime_handlers=[pb.RuntimeHandler(name="", features=pb.RuntimeHandlerFeatures())])

    def RuntimeConfig(self, request, context):
        return pb.RuntimeConfigResponse(
            linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    def UpdateRuntimeConfig(self, request, context):
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            with self._info_lock:
                self.pod_cidr = cidr
        return pb.UpdateRuntimeConfigResponse()
