"""POST /containers/create's body (Config, HostConfig, NetworkingConfig) as RunOptions.

Each field docker sends is either translated or, when it asks for something minirun
cannot do, refused with a 400 naming the field (never dropped silently). Zero values
(what the clients send for flags not given) are accepted everywhere.
"""

from __future__ import annotations

import shlex

from ..engine import RunOptions
from .server import ApiError

# fields of no consequence here: informational, or about what the clients do themselves
IGNORED_CONFIG = {"AttachStdin", "AttachStdout", "AttachStderr", "StdinOnce", "Image",
                  "ArgsEscaped", "OnBuild", "Shell", "NetworkDisabled"}
REFUSED_CONFIG = {"Domainname": "a domain name", "MacAddress": "a MAC address"}
REFUSED_HOST = {
    "Links": "links (--link)", "VolumesFrom": "--volumes-from",
    "BlkioWeight": "--blkio-weight", "BlkioWeightDevice": "--blkio-weight-device",
    "BlkioDeviceReadBps": "--device-read-bps", "BlkioDeviceWriteBps": "--device-write-bps",
    "BlkioDeviceReadIOps": "--device-read-iops",
    "BlkioDeviceWriteIOps": "--device-write-iops", "DeviceRequests": "--gpus",
    "DeviceCgroupRules": "--device-cgroup-rule", "KernelMemory": "--kernel-memory",
    "KernelMemoryTCP": "kernel TCP memory", "CpuRealtimePeriod": "--cpu-rt-period",
    "CpuRealtimeRuntime": "--cpu-rt-runtime", "IOMaximumIOps": "IOMaximumIOps",
    "IOMaximumBandwidth": "IOMaximumBandwidth", "CpuCount": "CpuCount",
    "CpuPercent": "CpuPercent", "StorageOpt": "--storage-opt",
    "VolumeDriver": "--volume-driver", "Annotations": "annotations",
}
LOG_DRIVERS = ("", "json-file", "local", "k8s-file")


def _zero(value) -> bool:
    return value in (None, "", 0, False, [], {}, "default")


def restart_policy(policy: dict) -> str:
    name = policy.get("Name") or "no"
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise ApiError(400, f"invalid restart policy {name!r}")
    count = policy.get("MaximumRetryCount") or 0
    if name == "on-failure" and count:
        return f"on-failure:{count}"
    if name != "on-failure" and count:
        raise ApiError(400, f"maximum retry count cannot be used with restart policy "
                            f"'{name}'")
    return name


def _mount_spec(m: dict) -> str:
    """A HostConfig.Mounts entry as the --mount spec runflags.mount_to_volume reads."""
    kind = (m.get("Type") or "volume").lower()
    parts = [f"type={kind}", f"target={m.get('Target') or ''}"]
    if m.get("Source"):
        parts.append(f"source={m['Source']}")
    if m.get("ReadOnly"):
        parts.append("readonly=true")
    bind = m.get("BindOptions") or {}
    if bind.get("Propagation"):
        parts.append(f"bind-propagation={bind['Propagation']}")
    if bind.get("NonRecursive"):
        raise ApiError(400, "Mounts: BindOptions.NonRecursive is not supported")
    vol = m.get("VolumeOptions") or {}
    if vol.get("NoCopy"):
        parts.append("volume-nocopy=true")
    if (vol.get("DriverConfig") or {}).get("Name") not in (None, "", "local"):
        raise ApiError(400, f"Mounts: volume driver {vol['DriverConfig']['Name']!r} is not "
                            "supported (only local)")
    tmpfs = m.get("TmpfsOptions") or {}
    if tmpfs.get("SizeBytes"):
        parts.append(f"tmpfs-size={tmpfs['SizeBytes']}")
    if tmpfs.get("Mode"):
        parts.append(f"tmpfs-mode={tmpfs['Mode']:o}")
    if m.get("Consistency") not in (None, "", "default", "consistent"):
        raise ApiError(400, f"Mounts: consistency {m['Consistency']!r} is not supported")
    return ",".join(parts)


def _publish(port_bindings: dict) -> list[str]:
    out = []
    for port, bindings in (port_bindings or {}).items():
        port = port if "/" in port else f"{port}/tcp"
        for b in bindings or [{}]:
            ip, host = (b or {}).get("HostIp") or "", (b or {}).get("HostPort") or ""
            if ip and ":" in ip:
                ip = f"[{ip}]"
            if ip:
                out.append(f"{ip}:{host}:{port}")  # no host port: "IP::PORT", a free one
            elif host:
                out.append(f"{host}:{port}")
            else:
                out.append(port)
    return out


def create_options(body: dict, name: str | None) -> tuple[str, RunOptions, list[str]]:
    """(image, RunOptions, warnings for the client) of a create request."""
    from ..errors import InvalidArgument
    from ..runflags import mount_to_volume, parse_devices

    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object (the container's Config)")
    host = body.get("HostConfig") or {}
    warnings: list[str] = []
    image = body.get("Image") or ""
    if not image:
        raise ApiError(400, "No image specified: the config has no Image")
    for key, what in REFUSED_CONFIG.items():
        value = body.get(key)
        if not _zero(value):
            raise ApiError(400, f"{key}: minirun does not support {what}")
    for key, what in REFUSED_HOST.items():
        if not _zero(host.get(key)):
            raise ApiError(400, f"HostConfig.{key}: minirun does not support {what}")
    if host.get("MemorySwappiness") not in (None, -1):
        raise ApiError(400, "HostConfig.MemorySwappiness: minirun does not support "
                            "--memory-swappiness")
    if host.get("UsernsMode") not in (None, "", "host"):
        raise ApiError(400, f"HostConfig.UsernsMode {host['UsernsMode']!r}: the Docker API "
                            "serves containers in the host's user namespace only")
    if host.get("CgroupnsMode") not in (None, "", "private", "host"):
        raise ApiError(400, f"HostConfig.CgroupnsMode {host['CgroupnsMode']!r}")
    if host.get("Runtime") not in (None, "", "runc", "minirun"):
        raise ApiError(400, f"HostConfig.Runtime {host['Runtime']!r}: only minirun's own")
    if host.get("Isolation") not in (None, "", "default"):
        raise ApiError(400, f"HostConfig.Isolation {host['Isolation']!r} is not supported")
    log = host.get("LogConfig") or {}
    if (log.get("Type") or "") not in LOG_DRIVERS:
        raise ApiError(400, f"HostConfig.LogConfig: log driver {log['Type']!r} is not "
                            "supported (json-file, local: minirun's own log)")
    log_opts = []
    for k, v in (log.get("Config") or {}).items():
        if k not in ("max-size", "max-file"):
            raise ApiError(400, f"HostConfig.LogConfig: log option {k!r} is not supported")
        log_opts.append(f"{k}={v}")

    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    entrypoint = body.get("Entrypoint")
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]
    opts = RunOptions(
        command=list(cmd or []), name=name, detach=True,
        interactive=bool(body.get("OpenStdin")), tty=bool(body.get("Tty")),
        remove=bool(host.get("AutoRemove")), env=list(body.get("Env") or []),
        workdir=body.get("WorkingDir") or None, user=body.get("User") or None,
        hostname=body.get("Hostname") or None,
        read_only=bool(host.get("ReadonlyRootfs")),
        cap_add=list(host.get("CapAdd") or []), cap_drop=list(host.get("CapDrop") or []),
        privileged=bool(host.get("Privileged")),
        security_opt=list(host.get("SecurityOpt") or []), init=bool(host.get("Init")),
        restart=restart_policy(host.get("RestartPolicy") or {}),
        entrypoint=None if entrypoint is None else shlex.join(entrypoint),
        publish_all=bool(host.get("PublishAllPorts")),
        dns=list(host.get("Dns") or []), dns_search=list(host.get("DnsSearch") or []),
        dns_option=list(host.get("DnsOptions") or []),
        add_host=list(host.get("ExtraHosts") or []), log_opts=log_opts,
        labels=dict(body.get("Labels") or {}),
        pid=host.get("PidMode") or "", ipc=_ipc(host.get("IpcMode")),
        uts=host.get("UTSMode") or "",
        group_add=[str(g) for g in host.get("GroupAdd") or []],
        oom_score_adj=host.get("OomScoreAdj") or None,
        cgroup_parent=host.get("CgroupParent") or "",
        sysctls=dict(host.get("Sysctls") or {}),
        cpu_shares=host.get("CpuShares") or None, cpu_quota=host.get("CpuQuota") or None,
        cpu_period=host.get("CpuPeriod") or None,
        cpuset_cpus=host.get("CpusetCpus") or "", cpuset_mems=host.get("CpusetMems") or "",
        memory_bytes=host.get("Memory") or None,
        memory_swap=host.get("MemorySwap") or None,
        memory_reservation=host.get("MemoryReservation") or None,
        oom_kill_disable=bool(host.get("OomKillDisable")),
        shm_size=host.get("ShmSize") or None,
        stop_signal=body.get("StopSignal") or "",
        stop_timeout=body.get("StopTimeout"),
        ulimits=[f"{u['Name']}={u.get('Soft', 0)}:{u.get('Hard', 0)}"
                 for u in host.get("Ulimits") or []],
    )
    opts.healthcheck = healthcheck_of(body.get("Healthcheck"))
    if host.get("PidsLimit"):
        opts.pids_limit = -1 if host["PidsLimit"] < 0 else host["PidsLimit"]
    if host.get("NanoCpus"):
        opts.cpus = f"{host['NanoCpus'] / 1e9:g}"
    if host.get("MaskedPaths") is not None:
        opts.masked_paths = list(host["MaskedPaths"])
    if host.get("ReadonlyPaths") is not None:
        opts.readonly_paths = list(host["ReadonlyPaths"])
    mode = host.get("NetworkMode") or "default"
    opts.network = "bridge" if mode == "default" else mode
    if body.get("NetworkDisabled"):
        opts.network = "none"
    _networking(body.get("NetworkingConfig") or {}, opts, warnings)
    opts.volumes = list(host.get("Binds") or [])
    for dest in body.get("Volumes") or {}:  # anonymous volumes (-v /data)
        if not any(v.split(":")[1:2] == [dest] for v in opts.volumes):
            opts.volumes.append(dest)
    opts.tmpfs = [f"{d}:{o}" if o else d for d, o in (host.get("Tmpfs") or {}).items()]
    try:
        for m in host.get("Mounts") or []:
            kind, value = mount_to_volume(_mount_spec(m))
            (opts.tmpfs if kind == "tmpfs" else opts.volumes).append(value)
        opts.devices = parse_devices([
            f"{d['PathOnHost']}:{d.get('PathInContainer') or d['PathOnHost']}"
            f":{d.get('CgroupPermissions') or 'rwm'}" for d in host.get("Devices") or []])
    except InvalidArgument as e:
        raise ApiError(400, str(e)) from None
    opts.publish = _publish(host.get("PortBindings") or {})
    exposed = [p if "/" in p else f"{p}/tcp" for p in body.get("ExposedPorts") or {}]
    published = {p.rsplit(":", 1)[-1] for p in opts.publish}
    if opts.publish_all:  # --expose'd ports are published too, as the image's are
        opts.publish += [p for p in exposed if p not in published]
    return image, opts, warnings


def healthcheck_of(value) -> dict | None:
    """Config.Healthcheck as RunOptions.healthcheck (what `run --health-*` makes): its
    set fields, a zero one being docker's default or the image's (merged at create);
    Test ["NONE"] turns the image's off. Bad values are refused at create with dockerd's
    400 messages (healthcheck.check)."""
    from ..healthcheck import DURATION_KEYS

    if _zero(value):
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "Config.Healthcheck: want a HealthConfig object")
    config = {k: value[k] for k in ("Test", *DURATION_KEYS, "Retries")
              if not _zero(value.get(k))}
    return config or None


def _ipc(mode: str | None) -> str:
    return "" if mode in (None, "", "private", "shareable") else mode


def _networking(config: dict, opts: RunOptions, warnings: list[str]) -> None:
    endpoints = config.get("EndpointsConfig") or {}
    if len(endpoints) > 1:
        raise ApiError(400, "NetworkingConfig: a container joins one network at create "
                            "(connect it to more afterwards)")
    for net, ep in endpoints.items():
        ep = ep or {}
        if net not in (opts.network, "default") and not (opts.network == "bridge" and
                                                         net == "bridge"):
            raise ApiError(400, f"NetworkingConfig: endpoint {net!r} is not the container's "
                                f"network mode {opts.network!r}")
        ipam = ep.get("IPAMConfig") or {}
        if ipam.get("IPv4Address") or ipam.get("IPv6Address") or ep.get("IPAddress"):
            raise ApiError(400, "NetworkingConfig: a fixed IP address is not supported")
        if ep.get("Links"):
            raise ApiError(400, "NetworkingConfig: links are not supported")
        if ep.get("MacAddress"):
            raise ApiError(400, "NetworkingConfig: a MAC address is not supported")
        if ep.get("Aliases"):
            warnings.append(f"network aliases {', '.join(ep['Aliases'])} are not resolved: "
                            "minirun's networks have no DNS")
