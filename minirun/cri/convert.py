"""CRI configs as engine objects: PodSandboxConfig -> PodSpec, ContainerConfig -> RunOptions.

Pure translation (the only reads are of the host paths a request names: mounts, devices,
seccomp profiles), so every rule is unit-tested with runtime.v1 messages and no container.
The messages come in as objects with the runtime.v1 field names; nothing here imports grpc.

What kubelet sends, and what we make of it (containerd 1.6's CRI plugin does the same,
unless said otherwise):
- command replaces the image's Entrypoint and drops its Cmd; args alone replace Cmd
  (Entrypoint + args); neither: Entrypoint + Cmd.
- run_as_username / run_as_user, with run_as_group as ":gid"; a group without a user is
  refused; the image's User otherwise.
- capabilities: add "ALL", then drop "ALL", then the single adds, then the single drops
  (so drop ALL + add NET_ADMIN is NET_ADMIN alone); privileged takes them all and no
  seccomp, masked or read-only paths.
- masked_paths / readonly_paths are used as sent: kubelet sends its defaults, and empty
  lists for procMount Unmasked (proto3 cannot tell "unset" from "empty").
- seccomp: the SecurityProfile when present, else the older seccomp_profile_path string;
  "" is unconfined, as the API documents.
- apparmor: the host has no AppArmor support in minirun, so anything but unconfined is
  refused with a message (containerd refuses likewise where AppArmor is off).
- mounts: symlinks in host paths followed; propagation private (rprivate),
  host-to-container (rslave) and bidirectional (rshared), which the engine checks
  against the host mount holding the source (shared, or slave for rslave).
"""

from __future__ import annotations

import os

from ..engine import DEFAULT_CAPS, RunOptions
from ..errors import InvalidArgument, Unsupported

# runtime.v1 enum values (facts of the API; kept here so this module needs no protobuf)
NS_POD, NS_CONTAINER, NS_NODE, NS_TARGET = 0, 1, 2, 3
PROPAGATION_PRIVATE, PROPAGATION_HOST_TO_CONTAINER, PROPAGATION_BIDIRECTIONAL = 0, 1, 2
PROFILE_RUNTIME_DEFAULT, PROFILE_UNCONFINED, PROFILE_LOCALHOST = 0, 1, 2
SUPPLEMENTAL_GROUPS_MERGE = 0
PROTOCOLS = {0: "tcp", 1: "udp", 2: "sctp"}
PROPAGATIONS = {PROPAGATION_PRIVATE: "rprivate", PROPAGATION_HOST_TO_CONTAINER: "rslave",
                PROPAGATION_BIDIRECTIONAL: "rshared"}
APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"
NAME_PREFIX = "k8s"


def _has(msg, name: str) -> bool:
    """Whether a message field is set (False for a message without that field)."""
    try:
        return msg.HasField(name)
    except ValueError:
        return False


# --- names -------------------------------------------------------------------------------

def check_name_part(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if "_" in value:
        # the engine name joins the parts with "_": one in a part would make it ambiguous
        raise InvalidArgument(f"{what} {value!r}: must not contain '_'")
    return value


def container_name(meta, pod_meta) -> str:
    """The engine's name of a CRI container, as dockershim and cri-dockerd name them:
    k8s_<container>_<pod>_<namespace>_<uid>_<attempt>. Unique, so a second container with
    the same metadata in the pod is refused (ALREADY_EXISTS) as the API asks."""
    return "_".join([NAME_PREFIX, check_name_part(meta.name, "container metadata name"),
                     check_name_part(pod_meta.name, "pod metadata name"),
                     check_name_part(pod_meta.namespace, "pod metadata namespace"),
                     check_name_part(pod_meta.uid, "pod metadata uid"), str(meta.attempt)])


def parse_container_name(name: str) -> tuple[str, int] | None:
    """(metadata name, attempt) from an engine name made by container_name; None for the
    engine's other containers."""
    parts = name.split("_")
    if len(parts) != 6 or parts[0] != NAME_PREFIX or not parts[5].isdigit():
        return None
    return parts[1], int(parts[5])


def labels_match(labels: dict, selector) -> bool:
    """The CRI's label selector: every key present with the same value."""
    return all(labels.get(k) == v for k, v in dict(selector).items())


# --- pods ----------------------------------------------------------------------------------

def namespace_mode(mode: int, allowed: dict, what: str) -> str:
    if mode not in allowed:
        raise InvalidArgument(f"{what} namespace mode {mode} is not supported here")
    return allowed[mode]


def check_user_namespace(ns, what: str) -> None:
    """kubelet asks for a pod user namespace (hostUsers: false) with mode POD and id
    mappings; NODE, or no options at all, is the host's, which is all we run."""
    if _has(ns, "userns_options") and ns.userns_options.mode != NS_NODE and (
            ns.userns_options.uids or ns.userns_options.gids):
        raise Unsupported(f"{what}: user namespaces (hostUsers: false) are not "
                              "supported")


def pod_spec(config, runtime_handler: str = ""):
    """PodSandboxConfig -> minirun.pods.PodSpec."""
    from ..pods import PodSpec

    if not _has(config, "metadata") or not config.metadata.name:
        raise InvalidArgument("pod sandbox config has no metadata name")
    meta = config.metadata
    for value, what in ((meta.namespace, "namespace"), (meta.uid, "uid")):
        if not value:
            raise InvalidArgument(f"pod sandbox metadata {what} is empty")
    linux = config.linux
    sc = linux.security_context
    ns = sc.namespace_options
    network = namespace_mode(ns.network, {NS_POD: "pod", NS_NODE: "node"}, "pod network")
    pid = namespace_mode(ns.pid, {NS_POD: "pod", NS_CONTAINER: "container", NS_NODE: "node"},
                         "pod pid")
    ipc = namespace_mode(ns.ipc, {NS_POD: "pod", NS_NODE: "node"}, "pod ipc")
    check_user_namespace(ns, "pod")
    check_apparmor(sc, "pod")
    ports = []
    for p in config.port_mappings:
        if p.protocol not in PROTOCOLS:
            raise InvalidArgument(f"port mapping: unknown protocol {p.protocol}")
        if not 0 <= p.host_port <= 65535 or not 0 < p.container_port <= 65535:
            raise InvalidArgument(f"port mapping {p.host_port}:{p.container_port}: ports are "
                                  "1-65535")
        ports.append({"protocol": PROTOCOLS[p.protocol], "container_port": p.container_port,
                      "host_port": p.host_port, "host_ip": p.host_ip})
    dns = config.dns_config
    return PodSpec(
        name=meta.name, namespace=meta.namespace, uid=meta.uid, attempt=meta.attempt,
        hostname=config.hostname, labels=dict(config.labels),
        annotations=dict(config.annotations), log_directory=config.log_directory,
        dns_servers=list(dns.servers), dns_searches=list(dns.searches),
        dns_options=list(dns.options), port_mappings=ports, network=network, pid=pid,
        ipc=ipc, sysctls=dict(linux.sysctls), cgroup_parent=linux.cgroup_parent,
        privileged=sc.privileged, runtime_handler=runtime_handler,
        overhead=resources(linux.overhead) if _has(linux, "overhead") else {},
        resources=resources(linux.resources) if _has(linux, "resources") else {})


# --- containers ----------------------------------------------------------------------------

class PodContext:
    """What a container takes from its pod: the record's id, the namespaces the pod pinned
    (Pods.namespaces: a path, "host", or None for none), its files dir (hostname, hosts,
    resolv.conf), and, for a TARGET pid namespace, the target container's pid ns path."""

    def __init__(self, pod_id: str, namespaces: dict, files_dir: str | None = None,
                 target_pid_ns: str | None = None) -> None:
        self.id = pod_id
        self.namespaces = namespaces
        self.files_dir = files_dir
        self.target_pid_ns = target_pid_ns


def command_line(config, image_config: dict) -> list[str]:
    """The process's argv from the container config and the image's config, as kubelet
    expects it (k8s: command is the Entrypoint, args the Cmd)."""
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = list(image_config.get("Cmd") or [])
        entrypoint = list(image_config.get("Entrypoint") or [])
        command = [] if entrypoint == [""] else entrypoint
    argv = command + args
    if not argv:
        raise InvalidArgument("no command specified: the container config and the image "
                              "give neither a command nor args")
    return argv


def user_and_group(sc) -> tuple[str | None, str | None]:
    """(user, group) for the engine: a uid or a name (None: the image's User), a gid."""
    user = str(sc.run_as_user.value) if _has(sc, "run_as_user") else ""
    if sc.run_as_username:
        user = sc.run_as_username
    group = str(sc.run_as_group.value) if _has(sc, "run_as_group") else ""
    if not user:
        if group:
            raise InvalidArgument(f"run_as_group {group} is given without run_as_user or "
                                  "run_as_username")
        return None, None
    return user, group or None


def capabilities(caps, all_caps: list[str]) -> tuple[list[str], list[str]]:
    """(cap_add, cap_drop) relative to the engine's default set, giving the set the CRI
    asks for: ALL added, ALL dropped, then single adds, then single drops."""
    from ..spec import CAPABILITIES

    def full(name: str) -> str:
        name = name.upper()
        name = name if name.startswith("CAP_") else "CAP_" + name
        if name != "CAP_ALL" and name not in CAPABILITIES:
            raise InvalidArgument(f"unknown capability {name}")
        return name

    add = [full(c) for c in caps.add_capabilities]
    drop = [full(c) for c in caps.drop_capabilities]
    result = list(DEFAULT_CAPS)
    if "CAP_ALL" in add:
        result = list(all_caps)
    if "CAP_ALL" in drop:
        result = []
    result += [c for c in add if c != "CAP_ALL" and c not in result]
    result = [c for c in result if c not in drop]
    return ([c for c in result if c not in DEFAULT_CAPS],
            [c for c in DEFAULT_CAPS if c not in result])


def seccomp_choice(sc, privileged: bool) -> str | None:
    """--security-opt seccomp=VALUE for the engine: "unconfined", a profile path, or None
    for the runtime's default profile."""
    if privileged:
        return "unconfined"
    if _has(sc, "seccomp"):
        profile = sc.seccomp
        if profile.profile_type == PROFILE_RUNTIME_DEFAULT:
            return None
        if profile.profile_type == PROFILE_UNCONFINED:
            return "unconfined"
        if profile.profile_type == PROFILE_LOCALHOST:
            return _local_profile(profile.localhost_ref)
        raise InvalidArgument(f"seccomp: unknown profile type {profile.profile_type}")
    path = sc.seccomp_profile_path
    if path in ("", "unconfined"):
        return "unconfined"
    if path in ("runtime/default", "docker/default"):
        return None
    if path.startswith("localhost/"):
        return _local_profile(path[len("localhost/"):])
    raise InvalidArgument(f"seccomp profile {path!r}: want runtime/default, docker/default, "
                          "unconfined or localhost/<absolute path>")


def _local_profile(path: str) -> str:
    if not os.path.isabs(path):
        raise InvalidArgument(f"seccomp localhost profile {path!r}: must be an absolute path")
    if not os.path.isfile(path):
        raise InvalidArgument(f"seccomp localhost profile {path} does not exist")
    return path


def apparmor_enabled(path: str = APPARMOR_ENABLED) -> bool:
    try:
        with open(path) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def check_apparmor(sc, what: str) -> None:
    """Only "no profile" is true of minirun: it loads no AppArmor profile."""
    wanted = ""
    if _has(sc, "apparmor"):
        kind = sc.apparmor.profile_type
        if kind != PROFILE_UNCONFINED:
            wanted = ("runtime/default" if kind == PROFILE_RUNTIME_DEFAULT
                      else f"localhost/{sc.apparmor.localhost_ref}")
    elif getattr(sc, "apparmor_profile", "") not in ("", "unconfined"):
        wanted = sc.apparmor_profile
    if not wanted:
        return
    host = ("this host has AppArmor enabled, but minirun does not load profiles"
            if apparmor_enabled() else "this host has no AppArmor")
    raise InvalidArgument(f"{what} apparmor profile {wanted}: {host}; only unconfined is "
                          "supported")


def host_hugepages(page_size: str, hugepages_dir: str = HUGEPAGES_DIR) -> int:
    """How many pages of that size (the API's "2MB", "1GB": base 1024) the host has
    reserved; 0 for a size it does not have."""
    units = {"KB": 1, "MB": 1024, "GB": 1024 ** 2}
    number, unit = page_size[:-2], page_size[-2:].upper()
    if not number.isdigit() or unit not in units:
        raise InvalidArgument(f"hugepage limit: bad page size {page_size!r} (2MB, 1GB)")
    try:
        with open(os.path.join(hugepages_dir, f"hugepages-{int(number) * units[unit]}kB",
                               "nr_hugepages")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def resources(res, hugepages_dir: str = HUGEPAGES_DIR) -> dict:
    """LinuxContainerResources as the engine's resource options (RunOptions names); what
    is 0 or empty is not specified and left out.

    kubelet sends a hugepage limit for every page size the host knows, 0 for those the
    container did not ask for. A 0 limit for a size with no page reserved on the host
    denies nothing that could be had: it is left out, so that a host without the hugetlb
    cgroup controller (this VM's cgroup v1) still runs kubelet's containers; a 0 limit
    where pages are reserved stays (and is refused where it cannot be enforced)."""
    out: dict = {}
    for field, key in (("cpu_period", "cpu_period"), ("cpu_quota", "cpu_quota"),
                       ("cpu_shares", "cpu_shares"), ("memory_limit_in_bytes", "memory_bytes"),
                       ("memory_swap_limit_in_bytes", "memory_swap"),
                       ("oom_score_adj", "oom_score_adj"), ("cpuset_cpus", "cpuset_cpus"),
                       ("cpuset_mems", "cpuset_mems")):
        value = getattr(res, field)
        if value:
            out[key] = value
    for key in ("cpu_period", "cpu_quota", "cpu_shares", "memory_bytes", "memory_swap"):
        if key in out and out[key] < 0 and not (key in ("cpu_quota", "memory_swap")
                                                and out[key] == -1):
            raise InvalidArgument(f"resources: {key} {out[key]} is negative")
    hugepages = {h.page_size: h.limit for h in res.hugepage_limits
                 if h.limit or host_hugepages(h.page_size, hugepages_dir)}
    if hugepages:
        out["hugepage_limits"] = hugepages
    if res.unified:
        out["unified"] = dict(res.unified)
    return out


def mounts(config_mounts) -> list[dict]:
    """The container's host-path mounts as OCI mounts (bind, with propagation). The
    engine checks them (sources there, propagation the host mount allows)."""
    out = []
    for m in config_mounts:
        if _has(m, "image") and m.image.image:
            raise Unsupported(f"mount {m.container_path}: image volumes are not supported")
        if not m.host_path:
            raise InvalidArgument(f"mount {m.container_path!r}: no host path")
        if m.propagation not in PROPAGATIONS:
            raise InvalidArgument(f"mount {m.container_path}: unknown propagation "
                                  f"{m.propagation}")
        if list(getattr(m, "uidMappings", [])) or list(getattr(m, "gidMappings", [])):
            raise Unsupported(f"mount {m.container_path}: id-mapped mounts are not "
                                  "supported")
        if getattr(m, "recursive_read_only", False) and (
                not m.readonly or m.propagation != PROPAGATION_PRIVATE):
            raise InvalidArgument(f"mount {m.container_path}: recursive read-only needs "
                                  "readonly and private propagation")
        # the API: a symlink is followed and its target mounted
        out.append({"destination": m.container_path, "type": "bind",
                    "source": os.path.realpath(m.host_path),
                    "options": ["rbind", PROPAGATIONS[m.propagation],
                                "ro" if m.readonly else "rw"]})
    return out


def shm_mount(config_mounts, ipc: str, pod_shm: str | None) -> list[dict]:
    """containerd's /dev/shm: the pod's tmpfs for a container in the pod's IPC namespace
    (the engine gives one in the host's the host's /dev/shm), unless the config mounts
    something there itself."""
    if ipc == "host" or not pod_shm or pod_shm == "host" or any(
            os.path.normpath(m.container_path) == "/dev/shm" for m in config_mounts):
        return []
    return [{"destination": "/dev/shm", "type": "bind", "source": pod_shm,
             "options": ["rbind", "rprivate", "rw"]}]


def is_pod_shm(mount: dict, pod_id: str | None) -> bool:
    """Whether an engine mount is the one shm_mount adds (the pod's /dev/shm)."""
    source = mount.get("source") or ""
    return bool(pod_id) and mount.get("destination") == "/dev/shm" and \
        os.path.basename(source) == "shm" and \
        os.path.basename(os.path.dirname(source)) == pod_id


def devices(config_devices) -> list[dict]:
    """The engine's devices (it checks them: host nodes, paths, permissions)."""
    return [{"host": os.path.realpath(d.host_path) if d.host_path else "",
             "container": d.container_path or d.host_path,
             "permissions": d.permissions or "rwm"} for d in config_devices]


def log_path(config, sandbox_config) -> str:
    if not config.log_path:
        return ""
    path = os.path.join(sandbox_config.log_directory, config.log_path)
    if not os.path.isabs(path):
        raise InvalidArgument(f"log path {path!r}: the pod's log_directory must be absolute")
    return os.path.normpath(path)


def _namespace_option(mode: int, ns_path, what: str, target: str | None = None) -> str:
    if mode == NS_NODE:
        return "host"
    if mode == NS_CONTAINER:
        return ""
    if mode == NS_TARGET:
        if not target:
            raise InvalidArgument(f"{what} namespace TARGET needs a target container")
        return f"ns:{target}"
    if ns_path == "host":
        return "host"
    return f"ns:{ns_path}" if ns_path else ""


def run_options(config, sandbox_config, image_config: dict, pod: PodContext,
                all_caps: list[str] | None = None) -> RunOptions:
    """ContainerConfig (+ the pod's config, the image's config) -> the engine's RunOptions."""
    if not _has(config, "metadata") or not config.metadata.name:
        raise InvalidArgument("container config has no metadata name")
    if not _has(config, "image") or not config.image.image:
        raise InvalidArgument("container config has no image")
    name = container_name(config.metadata, sandbox_config.metadata)
    linux = config.linux
    sc = linux.security_context
    pod_sc = sandbox_config.linux.security_context
    privileged = sc.privileged
    if privileged and not pod_sc.privileged:
        raise InvalidArgument("a privileged container needs a privileged pod sandbox")
    check_apparmor(sc, "container")
    ns = sc.namespace_options
    check_user_namespace(ns, "container")
    if list(getattr(config, "CDI_devices", [])):
        raise Unsupported("CDI devices are not supported (name the device nodes in "
                              "devices instead)")
    if ns.network not in (NS_POD, NS_NODE):
        raise InvalidArgument(f"container network namespace mode {ns.network}: only POD or "
                              "NODE")
    if ns.ipc not in (NS_POD, NS_NODE):
        raise InvalidArgument(f"container ipc namespace mode {ns.ipc}: only POD or NODE")
    if ns.pid not in (NS_POD, NS_CONTAINER, NS_NODE, NS_TARGET):
        raise InvalidArgument(f"container pid namespace mode {ns.pid}: unknown")
    pod_ns = pod.namespaces
    network = _namespace_option(ns.network, pod_ns.get("network"), "network")
    if network == "":
        network = "none"
    cap_add, cap_drop = ([], []) if privileged else \
        capabilities(sc.capabilities, all_caps if all_caps is not None else _all_caps())
    if getattr(sc, "supplemental_groups_policy", 0) != SUPPLEMENTAL_GROUPS_MERGE:
        # the engine always adds the image's groups of the user: Strict would be a lie
        raise Unsupported("supplemental_groups_policy Strict is not supported (Merge "
                              "only)")
    seccomp = seccomp_choice(sc, privileged)
    security_opt = [] if seccomp is None else [f"seccomp={seccomp}"]
    user, group = user_and_group(sc)
    env = []
    for kv in config.envs:
        if not kv.key:
            raise InvalidArgument("environment variable with an empty name")
        env.append(f"{kv.key}={kv.value}")
    res = resources(linux.resources) if _has(linux, "resources") else {}
    pod_linux = sandbox_config.linux
    ipc = _namespace_option(ns.ipc, pod_ns.get("ipc"), "ipc")
    return RunOptions(
        command=command_line(config, image_config), entrypoint="", name=name, detach=True,
        interactive=config.stdin, stdin_once=config.stdin and config.stdin_once,
        tty=config.tty, env=env,
        workdir=config.working_dir or None, user=user, group=group,
        read_only=sc.readonly_rootfs,
        cap_add=cap_add, cap_drop=cap_drop, privileged=privileged,
        security_opt=security_opt, network=network,
        pid=_namespace_option(ns.pid, pod_ns.get("pid"), "pid", pod.target_pid_ns),
        ipc=ipc,
        uts=("host" if ns.network == NS_NODE
             else _namespace_option(NS_POD, pod_ns.get("uts"), "uts")),
        mounts=mounts(config.mounts) + shm_mount(config.mounts, ipc, pod_ns.get("shm")),
        devices=devices(config.devices),
        masked_paths=None if privileged else list(sc.masked_paths),
        readonly_paths=None if privileged else list(sc.readonly_paths),
        group_add=[str(g) for g in sc.supplemental_groups],
        cgroup_parent=pod_linux.cgroup_parent, log_path=log_path(config, sandbox_config),
        labels=dict(config.labels), annotations=dict(config.annotations),
        pod=pod.id, pod_files=pod.files_dir or "", sysctls=dict(pod_linux.sysctls),
        no_new_privileges=sc.no_new_privs, **res)


def _all_caps() -> list[str]:
    from ..engine import _bounding_set

    return _bounding_set()
