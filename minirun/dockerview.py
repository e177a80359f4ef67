"""Containers as docker shows them: `ps`'s row (its template context, STATUS text and
filters) and `inspect`'s document, made from the engine's records.

Field names, values and zero values are docker's (moby's api/types ContainerJSON and the
CLI's formatter.containerContext), so `--format '{{.State.Status}}'` and scripts that read
`docker inspect` work unchanged. What only minirun has is under `inspect`'s "Minirun" key.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from typing import Any

from .errors import InvalidArgument, NotFound

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time, as docker prints an unset one
# `--format table` column titles (docker's formatter headers)
PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
              "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
              "State": "STATE", "Status": "STATUS", "Size": "SIZE", "Names": "NAMES",
              "Labels": "LABELS", "Label": "LABEL", "Mounts": "MOUNTS",
              "Networks": "NETWORKS", "LocalVolumes": "LOCAL VOLUMES"}
PS_TABLE = "{{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t" \
           "{{.Names}}"
STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def rfc3339(epoch: float | None) -> str:
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction dropped), or the zero time."""
    if not epoch:
        return ZERO_TIME
    whole = int(epoch)
    frac = f"{round((epoch - whole) * 1e9):09d}".rstrip("0")[:9]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{stamp}.{frac}Z" if frac else f"{stamp}Z"


def human_duration(seconds: float) -> str:
    from .cli_image import human_duration as go_units

    return go_units(seconds)


def state_of(rec: dict) -> str:
    """docker's State.Status of a record."""
    status = rec["status"]
    if status == "running" and rec.get("paused"):  # frozen (Engine._reconcile)
        return "paused"
    return "created" if status == "creating" else status if status in STATES else "dead"


def exit_code_of(rec: dict) -> int:
    """The exit code to show: an unknown one (-1, None: the status was lost) is docker's
    255, as docker shows a container whose task containerd lost."""
    code = rec.get("exit_code")
    return 255 if code is None or code < 0 else code


def status_text(rec: dict, now: float | None = None) -> str:
    """ps's STATUS: `Up 5 seconds`, `Up 2 minutes (Paused)`, `Exited (137) 5 seconds
    ago`, `Created`."""
    now = time.time() if now is None else now
    state = state_of(rec)
    if state in ("running", "paused"):
        since = rec.get("started") or rec.get("created") or now
        text = f"Up {human_duration(max(0.0, now - since))}"
        return text + " (Paused)" if state == "paused" else text
    if state == "exited":
        when = rec.get("finished") or rec.get("started") or rec.get("created") or now
        return f"Exited ({exit_code_of(rec)}) {human_duration(max(0.0, now - when))} ago"
    return state.capitalize()


def _options(rec: dict) -> dict:
    try:
        return json.loads(rec.get("options") or "{}")
    except ValueError:
        return {}


def labels_of(rec: dict) -> dict:
    labels = _options(rec).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def _ports_text(settings: dict) -> str:
    out = []
    for port, bindings in sorted((settings.get("Ports") or {}).items()):
        for b in bindings or []:
            out.append(f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}->{port}")
        if not bindings:
            out.append(port)
    return ", ".join(out)


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


class PsContext(dict):
    """One row of `ps`: docker's containerContext fields as keys; `.Label "k"` a method."""

    go_type = "*formatter.ContainerContext"

    def Label(self, name: str) -> str:
        return self.labels.get(name, "")


def ps_context(engine: Any, rec: dict, no_trunc: bool = False, size: bool = False,
               now: float | None = None) -> PsContext:
    opts = _options(rec)
    command = " ".join(json.loads(rec["command"]))
    settings = _network_settings(engine, rec)
    labels = labels_of(rec)
    volumes = [v.split(":")[0] for v in opts.get("volumes") or []]
    created = rec.get("created") or 0
    ctx = PsContext({
        "Command": json.dumps(command if no_trunc else _ellipsis(command, 20),
                              ensure_ascii=False),
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(created)),
        "ID": rec["id"] if no_trunc else rec["id"][:12],
        "Image": rec["image"],
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "LocalVolumes": str(sum(1 for v in volumes if v and not v.startswith("/"))),
        "Mounts": ",".join(v if no_trunc else _ellipsis(v, 15) for v in volumes),
        "Names": rec["name"],
        "Networks": ",".join((settings.get("Networks") or {}).keys()),
        "Ports": _ports_text(settings),
        "RunningFor": human_duration(max(0.0, (now or time.time()) - created)) + " ago",
        "Size": _size_text(engine, rec) if size else "0B",
        "State": state_of(rec),
        "Status": status_text(rec, now) + health_suffix(engine, rec),
    })
    ctx.labels = labels
    return ctx


def health_suffix(engine: Any, rec: dict) -> str:
    """` (healthy)` and the like after a running container's `Up ...` (docker's)."""
    if state_of(rec) != "running":
        return ""
    from .monitor import health

    return health.ps_suffix(health.status_of(engine, rec))


def upper_size(engine: Any, cid: str) -> int:
    """Bytes of the container's own files (its overlay upper dir)."""
    return tree_size(os.path.join(engine.root, "containers", cid, "upper"))


def tree_size(path: str) -> int:
    """Bytes of the files below `path` (symlinks counted as links, never followed)."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _size_text(engine: Any, rec: dict) -> str:
    """docker's SIZE: the writable layer, and with the image's (`0B (virtual 4.26MB)`)."""
    from .cli_image import human_size

    own = upper_size(engine, rec["id"])
    try:
        from .image.store import ImageStore

        with ImageStore(engine.root) as store:
            image = store.get(rec["image_id"]).size
    except Exception:  # noqa: BLE001 - the image may be gone: its size is unknown
        return human_size(own)
    return f"{human_size(own)} (virtual {human_size(own + image)})"


def _network_settings(engine: Any, rec: dict) -> dict:
    try:
        return engine.network_settings(rec)
    except Exception:  # noqa: BLE001 - a listing must not fail over one container's network
        return {"Networks": {_options(rec).get("network") or "bridge": {}}, "Ports": {}}


# --- ps filters -----------------------------------------------------------------------------

PS_FILTERS = ("name", "id", "status", "label", "ancestor", "exited", "before", "since",
              "network", "volume", "health", "publish", "expose")


def parse_filters(values: list[str] | tuple[str, ...], known: tuple[str, ...]) -> dict:
    """`--filter key=value`, repeatable: {key: [values]} (values of one key are ORed,
    except label's, which must all match; keys ANDed, as docker)."""
    out: dict[str, list[str]] = {}
    for item in values:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            raise InvalidArgument(f"bad format of filter (expected name=value): {item}")
        if key not in known:
            raise InvalidArgument(f"invalid filter '{key}'")
        out.setdefault(key, []).append(value)
    return out


def filter_records(engine: Any, recs: list[dict], filters: dict) -> list[dict]:
    """The records that pass docker's ps filters."""
    for value in filters.get("status", []):
        if value not in STATES:
            raise InvalidArgument(f"invalid filter 'status={value}'")
    if "health" in filters:
        from .monitor import health

        health.check_filter(filters["health"])
    for value in filters.get("exited", []):
        if not value.lstrip("-").isdigit():
            raise InvalidArgument(f"invalid filter 'exited={value}'")
    marks = {}
    for key in ("before", "since"):
        for value in filters.get(key, []):
            try:
                marks.setdefault(key, []).append(engine.get(value)["created"])
            except NotFound:
                raise InvalidArgument(f"no such container: {value}") from None
    out = []
    for rec in recs:
        # values of one key are ORed, but every label filter must match (docker's
        # MatchKVList: compose asks for project=X and oneoff=False at once)
        if all((all if key == "label" else any)(
                _passes(engine, rec, key, value, marks) for value in values)
               for key, values in filters.items()):
            out.append(rec)
    return out


def _passes(engine: Any, rec: dict, key: str, value: str, marks: dict) -> bool:
    opts = _options(rec)
    if key == "name":
        try:
            return re.search(value, rec["name"]) is not None
        except re.error:
            return value in rec["name"]
    if key == "id":
        return rec["id"].startswith(value)
    if key == "status":
        return state_of(rec) == value
    if key == "label":
        name, eq, want = value.partition("=")
        labels = labels_of(rec)
        return name in labels and (not eq or labels[name] == want)
    if key == "ancestor":
        return _is_ancestor(rec, value)
    if key == "exited":
        return state_of(rec) == "exited" and exit_code_of(rec) == int(value)
    if key == "before":
        return any(rec["created"] < mark for mark in marks["before"])
    if key == "since":
        return any(rec["created"] > mark for mark in marks["since"])
    if key == "network":
        nets = _network_settings(engine, rec).get("Networks") or {}
        return value in nets or (opts.get("network") or "bridge") == value
    if key == "volume":
        for spec in opts.get("volumes") or []:
            parts = spec.split(":")
            if value in parts[:2]:
                return True
        return False
    if key == "health":  # starting, healthy, unhealthy, or none (no check, never run)
        from .monitor import health

        return health.status_of(engine, rec) == value
    if key in ("publish", "expose"):  # a container port, 80 or 80/tcp
        want = value if "/" in value else f"{value}/tcp"
        ports = {_parse_publish(p)[0] for p in opts.get("publish") or []}
        if key == "expose":
            ports |= set((_network_settings(engine, rec).get("Ports") or {}).keys())
        return want in ports
    return False


def _is_ancestor(rec: dict, value: str) -> bool:
    from .image.reference import parse_reference

    image_id = rec.get("image_id") or ""
    bare = value.split(":", 1)[1] if value.startswith("sha256:") else value
    if len(bare) >= 3 and set(bare) <= set("0123456789abcdef") and \
            image_id.split(":", 1)[-1].startswith(bare):
        return True
    try:
        want, have = parse_reference(value), parse_reference(rec["image"])
    except Exception:  # noqa: BLE001 - not a reference: it matched nothing
        return False
    # `ancestor=busybox` matches every tag of busybox; `busybox:1.36` that tag
    return want.name == have.name and (":" not in value.rsplit("/", 1)[-1] or
                                       want.tag == have.tag)


# --- inspect --------------------------------------------------------------------------------

def _parse_publish(spec: str) -> tuple[str, dict]:
    """-p [IP:][HOST:]PORT[/PROTO] as docker's PortBindings entry."""
    port, _, proto = spec.partition("/")
    parts = port.rsplit(":", 2) if not port.startswith("[") else [port]
    ip, host = "", ""
    if len(parts) == 3:
        ip, host, cport = parts
    elif len(parts) == 2:
        host, cport = parts
    else:
        cport = parts[0]
    return f"{cport}/{proto or 'tcp'}", {"HostIp": ip.strip("[]"), "HostPort": host}


def _image_config(engine: Any, rec: dict) -> dict:
    try:
        from .image.store import ImageStore

        with ImageStore(engine.root) as store:
            return store.get(rec["image_id"]).config.get("config") or {}
    except Exception:  # noqa: BLE001 - the image may be gone; inspect still answers
        return {}


def _bundle_config(engine: Any, rec: dict) -> dict:
    try:
        with open(os.path.join(engine.root, "containers", rec["id"], "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _memory_bytes(opts: dict) -> int:
    if opts.get("memory_bytes"):
        return int(opts["memory_bytes"])
    if opts.get("memory"):
        from .engine import parse_size

        try:
            return parse_size(str(opts["memory"]), "--memory")
        except InvalidArgument:
            return 0
    return 0


def _mounts(engine: Any, opts: dict) -> list[dict]:
    out = []
    for spec in opts.get("volumes") or []:
        parts = spec.split(":")
        if len(parts) < 2:
            continue
        source, dest = parts[0], parts[1]
        modes = parts[2].split(",") if len(parts) > 2 else []
        rw = "ro" not in modes
        if source.startswith("/"):
            out.append({"Type": "bind", "Source": source, "Destination": dest,
                        "Mode": ",".join(modes), "RW": rw, "Propagation": next(
                            (m for m in modes if m.endswith(("private", "shared", "slave"))),
                            "rprivate")})
        else:
            out.append({"Type": "volume", "Name": source,
                        "Source": os.path.join(engine.root, "volumes", source, "_data"),
                        "Destination": dest, "Driver": "local", "Mode": ",".join(modes) or "z",
                        "RW": rw, "Propagation": ""})
    for m in opts.get("mounts") or []:
        if isinstance(m, dict) and m.get("destination"):
            options = m.get("options") or []
            out.append({"Type": m.get("type") or "bind", "Source": m.get("source") or "",
                        "Destination": m["destination"], "Mode": "",
                        "RW": "ro" not in options,
                        "Propagation": next((o for o in options if o.endswith(
                            ("private", "shared", "slave"))), "")})
    return out


def inspect_container(engine: Any, rec: dict) -> dict:
    """`docker inspect CONTAINER`'s document."""
    from .engine import DEFAULT_PIDS_LIMIT, parse_restart

    opts = _options(rec)
    image_cfg = _image_config(engine, rec)
    bundle = _bundle_config(engine, rec)
    process = bundle.get("process") or {}
    args = json.loads(rec["command"])
    state = state_of(rec)
    cdir = os.path.join(engine.root, "containers", rec["id"])
    if opts.get("entrypoint") is not None:
        entrypoint = shlex.split(opts["entrypoint"]) if opts["entrypoint"] else None
        cmd = list(opts.get("command") or []) or None
    else:
        entrypoint = image_cfg.get("Entrypoint") or None
        cmd = list(opts.get("command") or []) or image_cfg.get("Cmd") or None
    try:
        policy, retries = parse_restart(opts.get("restart") or "no")
    except InvalidArgument:
        policy, retries = opts.get("restart"), None
    bindings: dict = {}
    for spec in opts.get("publish") or []:
        port, binding = _parse_publish(spec)
        bindings.setdefault(port, []).append(binding)
    exposed = {p: {} for p in (image_cfg.get("ExposedPorts") or {})}
    exposed.update({p: {} for p in bindings})
    cpus = opts.get("cpus")
    try:
        nano_cpus = int(float(cpus) * 1e9) if cpus else 0
    except ValueError:
        nano_cpus = 0
    memory = _memory_bytes(opts)
    swap = opts.get("memory_swap")
    network_mode = opts.get("network") or "bridge"
    resources = ((bundle.get("linux") or {}).get("resources") or {})
    settings = _network_settings(engine, rec)
    settings = {"Bridge": "", "SandboxID": "", "HairpinMode": False,
                "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
                "SandboxKey": "", "SecondaryIPAddresses": None,
                "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": "",
                "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": "",
                "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "", **settings}
    security = list(opts.get("security_opt") or [])
    rootfs = (bundle.get("root") or {}).get("path") or os.path.join(cdir, "merged")
    return {
        "Id": rec["id"],
        "Created": rfc3339(rec.get("created")),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": state,
            "Running": state in ("running", "paused"),
            "Paused": state == "paused",
            "Restarting": state == "restarting",
            "OOMKilled": (rec.get("reason") or "") == "OOMKilled",
            "Dead": state == "dead",
            "Pid": (rec.get("pid") or 0) if state in ("running", "paused") else 0,
            "ExitCode": exit_code_of(rec) if state == "exited" else 0,
            "Error": "",
            "StartedAt": rfc3339(rec.get("started")),
            "FinishedAt": rfc3339(rec.get("finished")) if state == "exited" else ZERO_TIME,
            **_health_doc(engine, rec),
        },
        "Image": rec.get("image_id") or "",
        "ResolvConfPath": os.path.join(cdir, "resolv.conf"),
        "HostnamePath": os.path.join(cdir, "hostname"),
        "HostsPath": os.path.join(cdir, "hosts"),
        "LogPath": engine.log_path(rec["id"], opts),
        "Name": "/" + rec["name"],
        "RestartCount": rec.get("restart_count") or 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": opts.get("apparmor") or "",
        "ExecIDs": None,
        "HostConfig": {
            "Binds": list(opts.get("volumes") or []) or None,
            "ContainerIDFile": "",
            "LogConfig": {"Type": "json-file" if not opts.get("log_path") else "cri",
                          "Config": dict(o.split("=", 1) for o in opts.get("log_opts") or []
                                         if "=" in o)},
            "NetworkMode": network_mode,
            "PortBindings": bindings,
            "RestartPolicy": {"Name": policy, "MaximumRetryCount": retries or 0},
            "AutoRemove": bool(opts.get("remove")),
            "CapAdd": list(opts.get("cap_add") or []) or None,
            "CapDrop": list(opts.get("cap_drop") or []) or None,
            "Dns": list(opts.get("dns") or []),
            "DnsOptions": list(opts.get("dns_option") or []),
            "DnsSearch": list(opts.get("dns_search") or []),
            "ExtraHosts": list(opts.get("add_host") or []) or None,
            "GroupAdd": list(opts.get("group_add") or []) or None,
            "IpcMode": opts.get("ipc") or "private",
            "PidMode": opts.get("pid") or "",
            "UTSMode": opts.get("uts") or "",
            "UsernsMode": opts.get("userns") or "host",
            "OomScoreAdj": opts.get("oom_score_adj") or 0,
            "Privileged": bool(opts.get("privileged")),
            "PublishAllPorts": bool(opts.get("publish_all")),
            "ReadonlyRootfs": bool(opts.get("read_only")),
            "SecurityOpt": security or None,
            "Tmpfs": {t.partition(":")[0]: t.partition(":")[2]
                      for t in opts.get("tmpfs") or []} or None,
            "ShmSize": 67108864,
            "Runtime": "minirun",
            "Isolation": "",
            "CpuShares": opts.get("cpu_shares") or 0,
            "Memory": memory,
            "NanoCpus": nano_cpus,
            "CgroupParent": opts.get("cgroup_parent") or "",
            "CpuPeriod": opts.get("cpu_period") or 0,
            "CpuQuota": opts.get("cpu_quota") or 0,
            "CpusetCpus": opts.get("cpuset_cpus") or "",
            "CpusetMems": opts.get("cpuset_mems") or "",
            "Devices": [{"PathOnHost": d.get("host", ""),
                         "PathInContainer": d.get("container") or d.get("host", ""),
                         "CgroupPermissions": d.get("permissions") or "rwm"}
                        for d in opts.get("devices") or [] if isinstance(d, dict)],
            "MemoryReservation": 0,
            "MemorySwap": swap if swap is not None else (2 * memory if memory else 0),
            "PidsLimit": (resources.get("pids") or {}).get("limit",
                                                            opts.get("pids_limit") or
                                                            DEFAULT_PIDS_LIMIT),
            "Ulimits": [_ulimit(u) for u in opts.get("ulimits") or []] or None,
            "Init": bool(opts.get("init")) or None,
            "MaskedPaths": (bundle.get("linux") or {}).get("maskedPaths"),
            "ReadonlyPaths": (bundle.get("linux") or {}).get("readonlyPaths"),
            "Sysctls": dict(opts.get("sysctls") or {}) or None,
        },
        "GraphDriver": {"Name": "overlay2",
                        "Data": {"MergedDir": rootfs,
                                 "UpperDir": os.path.join(cdir, "upper"),
                                 "WorkDir": os.path.join(cdir, "work")}},
        "Mounts": _mounts(engine, opts),
        "Config": {
            "Hostname": opts.get("hostname") or rec["id"][:12],
            "Domainname": "",
            "User": opts.get("user") or image_cfg.get("User") or "",
            "AttachStdin": bool(opts.get("interactive")) and not opts.get("detach"),
            "AttachStdout": not opts.get("detach"),
            "AttachStderr": not opts.get("detach"),
            "ExposedPorts": exposed or None,
            "Tty": bool(opts.get("tty")),
            "OpenStdin": bool(opts.get("interactive")),
            "StdinOnce": bool(opts.get("interactive")) and not opts.get("detach"),
            "Env": process.get("env") or list(image_cfg.get("Env") or []),
            "Cmd": cmd,
            "Image": rec["image"],
            "Volumes": image_cfg.get("Volumes") or None,
            "WorkingDir": opts.get("workdir") or image_cfg.get("WorkingDir") or "",
            "Entrypoint": entrypoint,
            "OnBuild": None,
            "Labels": {**(image_cfg.get("Labels") or {}), **labels_of(rec)},
            "StopSignal": rec.get("stop_signal") or image_cfg.get("StopSignal") or None,
            **({"StopTimeout": opts["stop_timeout"]}
               if opts.get("stop_timeout") is not None else {}),
            **({"Healthcheck": opts["healthcheck"]} if opts.get("healthcheck") else {}),
        },
        "NetworkSettings": settings,
        # minirun's own: the options the container was made with, by RunOptions' names
        "Minirun": {"Options": opts, "Reason": rec.get("reason") or ""},
    }


def _health_doc(engine: Any, rec: dict) -> dict:
    """State.Health, left out (as docker's) for a container that never ran a check."""
    from .monitor import health

    doc = health.inspect_health(engine, rec)
    return {"Health": doc} if doc is not None else {}


def _ulimit(value: Any) -> dict:
    if isinstance(value, dict):
        return {"Name": value.get("type") or value.get("name", ""),
                "Soft": value.get("soft", 0), "Hard": value.get("hard", 0)}
    name, _, limits = str(value).partition("=")
    soft, _, hard = limits.partition(":")
    try:
        return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}
    except ValueError:
        return {"Name": name, "Soft": soft, "Hard": hard or soft}
