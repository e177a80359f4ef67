"""docker's `run`/`create` flags beyond the everyday ones, read as docker reads them and
turned into RunOptions fields: labels, resources (-m with its swap rule, --cpus,
--memory-swap, --cpu-shares, ...), devices, sysctls, namespaces (--pid, --ipc, --uts),
--mount, --platform, the --health-* flags (healthcheck.py). Pure functions of the flag
values and the host: nothing is made here, and every refusal is one line naming the flag
and the value.
"""

from __future__ import annotations

import os
import platform as _platform

from .errors import InvalidArgument

# docker's linuxMinMemory (daemon/daemon_unix.go) and --cpus's smallest step
MIN_MEMORY = 6 * 1024 * 1024
MIN_CPUS = 0.01
# -v/--mount options docker accepts without SELinux; z/Z relabel, a no-op here
VOLUME_MODES = {"ro", "rw", "z", "Z", "nocopy", "U", "rprivate", "private", "rslave",
                "slave", "rshared", "shared"}
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform() -> str:
    return f"linux/{GO_ARCH.get(_platform.machine(), _platform.machine())}"


def check_platform(value: str | None) -> None:
    """--platform: only this host's (minirun runs no emulation)."""
    if not value:
        return
    os_, _, rest = value.lower().partition("/")
    arch = rest.partition("/")[0]
    want_os, _, want_arch = host_platform().partition("/")
    if os_ != want_os or (arch and arch != want_arch):
        raise InvalidArgument(f"--platform {value}: only this host's platform "
                              f"{host_platform()} is supported (no emulation)")


def parse_labels(labels: list[str], label_files: list[str]) -> dict[str, str]:
    """-l KEY[=VALUE] and --label-file (one KEY=VALUE a line, # comments), files first."""
    lines: list[str] = []
    for path in label_files:
        try:
            with open(path) as f:
                lines += [ln.strip() for ln in f if ln.strip() and not ln.lstrip()
                          .startswith("#")]
        except OSError as e:
            raise InvalidArgument(f"--label-file {path}: {e.strerror}") from None
    out: dict[str, str] = {}
    for item in lines + list(labels):
        key, _, value = item.partition("=")
        if not key.strip():
            raise InvalidArgument(f"--label {item!r}: no key")
        out[key.strip()] = value
    return out


def parse_memory(text: str | None, what: str) -> int | None:
    """A docker size, None for unset, 0 meaning unlimited (None too), -1 kept (swap)."""
    from .engine import parse_size

    if text is None or text.strip() == "":
        return None
    if text.strip() == "0":
        return None
    if text.strip() == "-1":
        return -1
    return parse_size(text, what)


def swap_supported() -> bool:
    """Whether this host's memory cgroup limits swap (v1: memory.memsw.*, v2:
    memory.swap.max): docker drops swap limits with a warning where it does not."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        for top in ("/sys/fs/cgroup/minirun", "/sys/fs/cgroup/init.scope",
                    "/sys/fs/cgroup/system.slice"):
            if os.path.isdir(top):
                return os.path.exists(os.path.join(top, "memory.swap.max"))
        return False
    return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")


def memory_fields(memory: str | None, swap: str | None, reservation: str | None,
                  warn=None) -> dict:
    """-m, --memory-swap, --memory-reservation as docker reads them: 0 unlimited, a
    limit below 6MB refused, swap (memory + swap) twice the limit unless given, -1
    unlimited swap; on a host without swap accounting the swap limit is dropped with
    docker's warning."""
    limit = parse_memory(memory, "--memory")
    swap_bytes = parse_memory(swap, "--memory-swap")
    resv = parse_memory(reservation, "--memory-reservation")
    if limit == -1:
        limit = None
    if limit is not None and limit < MIN_MEMORY:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    if swap_bytes not in (None, -1):
        if limit is None:
            raise InvalidArgument("You should always set the Memory limit when using "
                                  "Memoryswap limit, see usage")
        if swap_bytes < limit:
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory "
                                  "limit, see usage")
    if resv is not None and resv != -1:
        if resv < MIN_MEMORY:
            raise InvalidArgument("Minimum memory reservation allowed is 6MB")
        if limit is not None and limit < resv:
            raise InvalidArgument("Minimum memory limit can not be less than memory "
                                  "reservation limit, see usage")
    elif resv == -1:
        resv = None
    if limit is not None and swap_bytes is None:
        swap_bytes = 2 * limit
    if swap_bytes is not None and not swap_supported():
        if swap is not None and warn is not None:
            warn("Your kernel does not support swap limit capabilities or the cgroup is not "
                 "mounted. Memory limited without swap.")
        swap_bytes = None
    # `memory` keeps the user's text for the record (inspect's Minirun.Options); the
    # engine goes by memory_bytes
    return {"memory": memory if limit is not None else None, "memory_bytes": limit,
            "memory_swap": swap_bytes, "memory_reservation": resv}


def check_cpus(text: str | None) -> str | None:
    """--cpus: 0 unlimited (None), else from 0.01 to the host's CPU count."""
    if text is None or text.strip() == "":
        return None
    try:
        cpus = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid argument {text!r} for \"--cpus\" flag: not a "
                              "number") from None
    if cpus == 0:
        return None
    ncpu = os.cpu_count() or 1
    if cpus < MIN_CPUS or cpus > ncpu:
        raise InvalidArgument(f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only "
                              f"{ncpu} CPUs available")
    return text


def check_cpuset(text: str | None, what: str = "--cpuset-cpus") -> str:
    """A cpuset list (0-3,5): "" for none; anything else refused before a cgroup write."""
    import re

    if not text:
        return ""
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        raise InvalidArgument(f"{what} {text!r}: want a list like 0-3,5")
    return text


def parse_devices(specs: list[str]) -> list[dict]:
    """--device HOST[:CONTAINER][:PERMISSIONS] as RunOptions.devices."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        if not parts[0] or len(parts) > 3:
            raise InvalidArgument(f"--device {spec!r}: want HOST[:CONTAINER][:rwm]")
        host, container, perms = parts[0], parts[0], "rwm"
        if len(parts) == 2:
            if set(parts[1]) <= set("rwm") and not parts[1].startswith("/"):
                perms = parts[1]
            else:
                container = parts[1]
        elif len(parts) == 3:
            container, perms = parts[1], parts[2]
        out.append({"host": host, "container": container, "permissions": perms})
    return out


def parse_sysctls(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"--sysctl {spec!r}: want NAME=VALUE")
        out[key] = value
    return out


def ipc_mode(value: str | None) -> str:
    """docker's --ipc: "" / private / shareable (a namespace of its own, which other
    containers may join by container:NAME here anyway), host, container:NAME."""
    if value in (None, "", "private", "shareable"):
        return ""
    if value == "none":
        raise InvalidArgument("--ipc none: not supported (no /dev/shm); use private")
    return value


def uts_mode(value: str | None) -> str:
    if value in (None, ""):
        return ""
    if value != "host":
        raise InvalidArgument(f"--uts {value!r}: only host is supported (as docker)")
    return value


def mount_to_volume(spec: str) -> tuple[str, str]:
    """--mount type=bind|volume|tmpfs,source=,target=,readonly,bind-propagation=,
    tmpfs-size=,tmpfs-mode=,volume-nocopy as ("volume", a -v spec) or ("tmpfs", a --tmpfs
    spec)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not key:
            continue
        aliases = {"src": "source", "dst": "target", "destination": "target",
                   "ro": "readonly"}
        key = aliases.get(key, key)
        if key in fields:
            raise InvalidArgument(f"--mount {spec!r}: {key} given twice")
        fields[key] = value if eq else "true"
    kind = fields.pop("type", "volume")
    target = fields.pop("target", "")
    if not target.startswith("/"):
        raise InvalidArgument(f"--mount {spec!r}: target must be an absolute path")
    readonly = fields.pop("readonly", "false").lower()
    if readonly not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"--mount {spec!r}: readonly={readonly}: true or false")
    options = ["ro"] if readonly in ("true", "1") else []
    if kind == "tmpfs":
        if "source" in fields:
            raise InvalidArgument(f"--mount {spec!r}: a tmpfs has no source")
        tmpfs_opts = []
        if "tmpfs-size" in fields:
            tmpfs_opts.append(f"size={fields.pop('tmpfs-size')}")
        if "tmpfs-mode" in fields:
            tmpfs_opts.append(f"mode={fields.pop('tmpfs-mode')}")
        _no_more(spec, fields)
        return "tmpfs", ":".join([target, ",".join(tmpfs_opts + options)]).rstrip(":")
    if kind not in ("bind", "volume"):
        raise InvalidArgument(f"--mount {spec!r}: type {kind!r}: bind, volume or tmpfs")
    source = fields.pop("source", "")
    if kind == "bind":
        if not source.startswith("/"):
            raise InvalidArgument(f"--mount {spec!r}: a bind needs an absolute source")
        prop = fields.pop("bind-propagation", "")
        if prop:
            if prop not in ("rprivate", "private", "rslave", "slave", "rshared", "shared"):
                raise InvalidArgument(f"--mount {spec!r}: bind-propagation {prop!r}")
            options.append(prop)
    else:
        if source.startswith("/"):
            raise InvalidArgument(f"--mount {spec!r}: a volume's source is a name; use "
                                  "type=bind for a host path")
        if not source:
            source = os.urandom(32).hex()  # docker: an anonymous volume
        if fields.pop("volume-nocopy", "false").lower() in ("true", "1"):
            options.append("nocopy")
    _no_more(spec, fields)
    return "volume", ":".join([source, target] + ([",".join(options)] if options else []))


def _no_more(spec: str, fields: dict) -> None:
    if fields:
        raise InvalidArgument(f"--mount {spec!r}: unknown or unsupported option "
                              f"{next(iter(fields))!r}")


def name_anonymous_volumes(specs: list[str]) -> list[str]:
    """-v /DST[:MODES] (no source: an anonymous volume) as RANDOM:/DST[:MODES], so that the
    record names the volume (volume rm and prune then see it in use)."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        if parts[0].startswith("/") and (len(parts) == 1 or len(parts) == 2 and
                                         not parts[1].startswith("/")):
            spec = f"{os.urandom(32).hex()}:{spec}"
        out.append(spec)
    return out


def parse_volume_modes(spec: str, modes: str) -> tuple[str, str | None, bool]:
    """-v's third part: ro|rw, z|Z (no SELinux here: nothing to relabel), nocopy (volumes
    are never filled from the image here), U (chown to the container's user), one
    propagation. (ro or rw, propagation or None, chown)."""
    access, prop, chown = "rw", None, False
    for mode in [m for m in modes.split(",") if m]:
        if mode not in VOLUME_MODES:
            raise InvalidArgument(f"-v {spec!r}: invalid mode {mode!r} (ro, rw, z, Z, "
                                  "nocopy, U, rprivate, private, rslave, slave, rshared, "
                                  "shared)")
        if mode in ("ro", "rw"):
            access = mode
        elif mode == "U":
            chown = True
        elif mode in ("z", "Z", "nocopy"):
            continue
        elif prop is not None and prop != mode:
            raise InvalidArgument(f"-v {spec!r}: more than one propagation ({prop}, {mode})")
        else:
            prop = mode
    return access, prop, chown


def docker_run_fields(kw: dict, warn=None) -> dict:
    """The RunOptions fields of docker's run/create flags as click hands them over (their
    click names); the flags consumed are removed from `kw`."""
    out: dict = {}
    check_platform(kw.pop("platform", None))
    out["labels"] = parse_labels(list(kw.pop("label", ())), list(kw.pop("label_file", ())))
    out.update(memory_fields(kw.pop("memory", None), kw.pop("memory_swap", None),
                             kw.pop("memory_reservation", None), warn))
    out["oom_kill_disable"] = bool(kw.pop("oom_kill_disable", False))
    out["cpus"] = check_cpus(kw.pop("cpus", None))
    shares = kw.pop("cpu_shares", None)
    out["cpu_shares"] = shares or None  # 0: the default weight, as docker
    out["cpuset_cpus"] = check_cpuset(kw.pop("cpuset_cpus", None))
    out["devices"] = parse_devices(list(kw.pop("device", ())))
    out["ulimits"] = list(kw.pop("ulimit", ()))
    shm = kw.pop("shm_size", None)
    out["shm_size"] = parse_memory(shm, "--shm-size") if shm else None
    out["stop_signal"] = kw.pop("stop_signal", None) or ""
    if out["stop_signal"]:
        from .container import parse_signal

        try:
            parse_signal(out["stop_signal"])
        except Exception:  # noqa: BLE001 - its own error type: one line here
            raise InvalidArgument(f"--stop-signal: invalid signal "
                                  f"{out['stop_signal']!r}") from None
    out["stop_timeout"] = kw.pop("stop_timeout", None)
    out["sysctls"] = parse_sysctls(list(kw.pop("sysctl", ())))
    out["group_add"] = list(kw.pop("group_add", ()))
    out["pid"] = kw.pop("pid", None) or ""
    if out["pid"] not in ("", "host") and not out["pid"].startswith("container:"):
        raise InvalidArgument(f"--pid {out['pid']!r}: host or container:NAME")
    out["ipc"] = ipc_mode(kw.pop("ipc", None))
    out["uts"] = uts_mode(kw.pop("uts", None))
    out["cgroup_parent"] = kw.pop("cgroup_parent", None) or ""
    out["oom_score_adj"] = kw.pop("oom_score_adj", None)
    from .healthcheck import from_flags

    out["healthcheck"] = from_flags(
        kw.pop("health_cmd", None), kw.pop("health_interval", None),
        kw.pop("health_timeout", None), kw.pop("health_retries", None),
        kw.pop("health_start_period", None), kw.pop("health_start_interval", None),
        bool(kw.pop("no_healthcheck", False)))
    volumes, tmpfs = [], []
    for spec in kw.pop("mount", ()):
        kind, value = mount_to_volume(spec)
        (tmpfs if kind == "tmpfs" else volumes).append(value)
    out["mount_volumes"], out["mount_tmpfs"] = volumes, tmpfs
    return out
