"""/_ping, /version and /info: what a client asks first (API version negotiation)."""

from __future__ import annotations

import os
import platform

from .. import __version__
from . import API_VERSION, MIN_API_VERSION
from .server import Response

PING_HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache",
                "Builder-Version": "1"}


def ping(req):
    """GET and HEAD /_ping: "OK" and the Api-Version header the clients negotiate with."""
    return Response(200, b"OK", "text/plain; charset=utf-8", PING_HEADERS)


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def version(req):
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux",
               "Arch": _arch(), "KernelVersion": platform.release(), "GitCommit": "",
               "GoVersion": f"python{platform.python_version()}", "BuildTime": "",
               "Experimental": "false"}
    return {"Platform": {"Name": "minirun"},
            "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
            "Version": __version__, "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION, "GitCommit": "",
            "GoVersion": details["GoVersion"], "Os": "linux", "Arch": _arch(),
            "KernelVersion": platform.release(), "BuildTime": ""}


def info(req):
    """docker info's document: cli.docker_info's fields (the host, the counts) plus the
    ones docker clients read without checking."""
    from ..cli import _networks_info, docker_info
    from ..info import collect

    doc = docker_info(collect(), _networks_info())
    doc.pop("Minirun", None)
    doc.update({
        "ID": _machine_id(), "Plugins": {"Volume": ["local"], "Network": ["bridge", "host",
                                                                          "none"],
                                         "Authorization": None, "Log": ["k8s-file"]},
        "MemoryLimit": True, "SwapLimit": True, "KernelMemory": False, "CpuCfsPeriod": True,
        "CpuCfsQuota": True, "CPUShares": True, "CPUSet": True, "PidsLimit": True,
        "IPv4Forwarding": True, "BridgeNfIptables": False, "BridgeNfIp6tables": False,
        "Debug": False, "NFd": len(os.listdir("/proc/self/fd")), "OomKillDisable": False,
        "NGoroutines": 1, "LoggingDriver": "k8s-file", "IndexServerAddress": "",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": [],
                           "Mirrors": []},
        "HttpProxy": "", "HttpsProxy": "", "NoProxy": "", "Labels": [],
        "ExperimentalBuild": False, "LiveRestoreEnabled": False, "Isolation": "",
        "InitBinary": "tini", "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""}, "InitCommit": {"ID": "", "Expected": ""},
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "",
                  "ControlAvailable": False, "Error": "", "RemoteManagers": None},
        "SystemTime": _now(), "Warnings": [],
    })
    return doc


def _machine_id() -> str:
    try:
        with open("/etc/machine-id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _now() -> str:
    from ..daemon.server import rfc3339nano

    return rfc3339nano()


ROUTES = [
    ("GET", "/_ping", ping),
    ("HEAD", "/_ping", ping),
    ("GET", "/version", version),
    ("GET", "/info", info),
]
