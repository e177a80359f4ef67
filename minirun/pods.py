"""Pods: the CRI's sandboxes as engine objects (no gRPC here; minirun/cri translates).

A pod is a record in engine.db's `pods` table and the namespaces its containers join:

- network: a netns pinned at /run/netns/minirun-pod-<id12> (made as the engine's own
  netns are, lo up), attached through CNI (minirun/network/cni.py) with the first
  network configuration of the conf dir (/etc/cni/net.d, MINIRUN_CNI_CONF_DIR), its
  port mappings given to the plugins as the `portMappings` capability; or the host's;
- IPC and UTS: made once, the hostname set inside, pinned by bind-mounting their nsfs
  files under <run_root>/pods/<id>/ns/ (or the host's);
- /dev/shm, with the pod's IPC namespace: a tmpfs (64 MiB, mode 1777, nosuid, nodev,
  noexec: containerd's) mounted at <run_root>/pods/<id>/shm, bound at /dev/shm in every
  container of the pod that shares the pod's IPC namespace (one with the host's gets the
  host's /dev/shm); unmounted when the pod stops, as containerd does;
- PID, when shared by the pod: a pid 1 must hold it, so a holder container (tini-static
  as pid 1, named /pause, and busybox-static's `sleep` as /busybox.hold its only child, in an empty read-only root) is run
  through the daemon like any engine container; its record has `holder_of` (not `pod`)
  in its options, so it is not one of the pod's containers. Its cost, measured here by
  tests/test_pods.py: RSS 2.0 MB, PSS 1.35 MB for the two processes (tini 0.7 MB RSS,
  busybox 1.3 MB, mostly its shared text), and about 30 ms on the pod's start. Pods
  whose containers each have their own pid namespace (kubelet's default) have none.

Files for the containers (hostname, hosts, resolv.conf) are in <root>/pods/<id>/.

Order: the record first (state notready), then each resource; anything failing undoes
what was made (the same code as `remove`, which tolerates half-made pods), so a crash
leaves a notready record that `remove` cleans. stop and remove are idempotent.

Namespaces are made and sysctls written by this thread switching namespaces and coming
back (setns on /proc/thread-self/ns/*), as minirun/network/netns.py does for netns: no
fork of a process that may hold gRPC threads, and 1-2 ms less than a child per pod.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field

from . import sys as _sys
from .errors import AlreadyExists, ContainerStateError, InvalidArgument, MiniRunError, NotFound

DEFAULT_CGROUP_PARENT = "/minirun"
NETNS_PREFIX = "minirun-pod-"
HOLDER_IMAGE = "minirun/pod-holder"
TINI = "/usr/bin/tini-static"
BUSYBOX = "/bin/busybox"
RUNTIME_HANDLERS = ("", "minirun", "runc")

# last in libcni's order: a cluster's CNI (10-calico, 10-flannel, 10-weave...) written
# beside it is the one new pods get
DEFAULT_CONFLIST_FILE = "99-minirun-pods.conflist"
DEFAULT_SUBNET = "10.89.0.0/16"
# tried in turn when a host route overlaps the one before (podman's default is 10.88)
DEFAULT_SUBNETS = [DEFAULT_SUBNET] + [f"10.{n}.0.0/16" for n in range(90, 100)]
DEFAULT_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "minirun-pods",
    "plugins": [
        {"type": "bridge", "bridge": "mrpods0", "isGateway": True, "ipMasq": True,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": DEFAULT_SUBNET}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ],
}
CONF_EXTENSIONS = (".conf", ".conflist", ".json")

# containerd's defaultShmSize: the size of a pod's /dev/shm
DEFAULT_SHM_SIZE = 64 << 20

# the IPC namespace's sysctls (runc's list: kernel.shm*, kernel.msg*, kernel.sem*)
_IPC_SYSCTLS = ("kernel.shm", "kernel.msg", "kernel.sem")

SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, namespace TEXT NOT NULL, uid TEXT NOT NULL,
    attempt INTEGER NOT NULL, state TEXT NOT NULL, created_ns INTEGER NOT NULL,
    labels TEXT NOT NULL, annotations TEXT NOT NULL, spec TEXT NOT NULL,
    netns TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT '',
    additional_ips TEXT NOT NULL DEFAULT '[]', hostname TEXT NOT NULL DEFAULT '',
    cgroup_parent TEXT NOT NULL DEFAULT '', log_directory TEXT NOT NULL DEFAULT '',
    holder TEXT NOT NULL DEFAULT '', cni_network TEXT NOT NULL DEFAULT '',
    cni_config TEXT NOT NULL DEFAULT '', cni_attached INTEGER NOT NULL DEFAULT 0,
    UNIQUE (name, namespace, uid, attempt))
"""


@dataclass
class PodSpec:
    """A pod's configuration, CRI's PodSandboxConfig in engine terms."""

    name: str
    namespace: str = "default"
    uid: str = ""
    attempt: int = 0
    hostname: str = ""
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    log_directory: str = ""
    dns_servers: list = field(default_factory=list)
    dns_searches: list = field(default_factory=list)
    dns_options: list = field(default_factory=list)
    # [{"protocol": tcp|udp|sctp, "container_port", "host_port", "host_ip"}]
    port_mappings: list = field(default_factory=list)
    network: str = "pod"  # pod | node
    pid: str = "container"  # container | pod | node
    ipc: str = "pod"  # pod | node
    sysctls: dict = field(default_factory=dict)
    cgroup_parent: str = ""
    privileged: bool = False
    runtime_handler: str = ""
    overhead: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    # the pod's /dev/shm (with ipc "pod"); records made before it was had none
    shm_size: int = DEFAULT_SHM_SIZE


# --- checks: everything refused before anything is made --------------------------------------

def check_spec(spec: PodSpec) -> None:
    if not isinstance(spec.name, str) or not spec.name:
        raise InvalidArgument("pod metadata: name is required")
    for what, value in (("namespace", spec.namespace), ("uid", spec.uid)):
        if not isinstance(value, str):
            raise InvalidArgument(f"pod metadata: {what} must be a string")
    if not isinstance(spec.attempt, int) or spec.attempt < 0:
        raise InvalidArgument(f"pod metadata: invalid attempt {spec.attempt!r}")
    for what, value, allowed in (("network", spec.network, ("pod", "node")),
                                 ("pid", spec.pid, ("container", "pod", "node")),
                                 ("ipc", spec.ipc, ("pod", "node"))):
        if value not in allowed:
            raise InvalidArgument(f"pod {what} namespace mode {value!r}: want "
                                  f"{' or '.join(allowed)}")
    if spec.hostname:
        check_hostname(spec.hostname)
    for what, mapping in (("labels", spec.labels), ("annotations", spec.annotations)):
        if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
            raise InvalidArgument(f"pod {what}: want a map of strings to strings")
    for server in spec.dns_servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"pod dns server {server!r} is not an IP address") from None
    for item in list(spec.dns_searches) + list(spec.dns_options):
        if not isinstance(item, str) or not item or any(c.isspace() for c in item):
            raise InvalidArgument(f"pod dns search or option {item!r}: want one word")
    for p in spec.port_mappings:
        check_port_mapping(p)
    for name, value in spec.sysctls.items():
        sysctl_path(name, spec)
        if not isinstance(value, str) or "\n" in value:
            raise InvalidArgument(f"sysctl {name}: invalid value {value!r}")
    parent = spec.cgroup_parent
    if parent and (not parent.startswith("/") or ".." in parent.split("/")):
        raise InvalidArgument(f"cgroup parent {parent!r}: the cgroupfs driver wants an "
                              "absolute path without '..'")
    if spec.runtime_handler not in RUNTIME_HANDLERS:
        known = ", ".join(repr(h) for h in RUNTIME_HANDLERS)
        raise InvalidArgument(f"no runtime for {spec.runtime_handler!r} is configured "
                              f"(handlers: {known})")
    if spec.log_directory and not os.path.isabs(spec.log_directory):
        raise InvalidArgument(f"pod log directory {spec.log_directory!r} is not absolute")


def check_hostname(name: str) -> None:
    # sethostname takes 64 bytes; kubelet sends RFC 1123 names (a pod name, cut at 63)
    ok = 0 < len(name) <= 64 and name[0].isalnum() and name.isascii() and all(
        c.isalnum() or c in "-." for c in name)
    if not ok:
        raise InvalidArgument(f"invalid pod hostname {name!r}: want at most 64 letters, "
                              "digits, '-' or '.', starting with a letter or digit")


def check_port_mapping(p: dict) -> None:
    proto = (p.get("protocol") or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"port mapping {p}: protocol must be tcp, udp or sctp")
    for key in ("container_port", "host_port"):
        value = p.get(key, 0)
        if not isinstance(value, int) or not 0 <= value < 65536:
            raise InvalidArgument(f"port mapping {p}: invalid {key} {value!r}")
    if not p.get("container_port"):
        raise InvalidArgument(f"port mapping {p}: container_port is required")
    host_ip = p.get("host_ip") or ""
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidArgument(f"port mapping {p}: invalid host_ip {host_ip!r}") from None


def sysctl_path(name: str, spec: PodSpec) -> str:
    """The path under /proc/sys of a sysctl the pod's own namespaces hold, or a one-line
    refusal: a host-wide sysctl written from a pod would change the whole node."""
    if not isinstance(name, str) or not name or name.startswith((".", "/")):
        raise InvalidArgument(f"invalid sysctl name {name!r}")
    # kubelet's two forms: net.ipv4.ip_forward, or with slashes when a part holds a dot
    # (net/ipv4/conf/eth0.100/forwarding)
    if "/" in name:
        path, dotted = name, name.replace("/", ".")
    else:
        path, dotted = name.replace(".", "/"), name
    if ".." in path.split("/") or "" in path.split("/"):
        raise InvalidArgument(f"invalid sysctl name {name!r}")
    if dotted.startswith("net."):
        if spec.network == "node":
            raise InvalidArgument(f"sysctl {name} is not allowed: the pod uses the host's "
                                  "network namespace")
    elif dotted.startswith(_IPC_SYSCTLS + ("fs.mqueue.",)):
        if spec.ipc == "node":
            raise InvalidArgument(f"sysctl {name} is not allowed: the pod uses the host's "
                                  "IPC namespace")
    elif dotted == "kernel.domainname":
        if spec.network == "node":
            raise InvalidArgument(f"sysctl {name} is not allowed: the pod uses the host's "
                                  "UTS namespace")
    else:
        raise InvalidArgument(f"sysctl {name} is not namespaced: a pod may set only net.*, "
                              "kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and "
                              "kernel.domainname")
    return path


# --- CNI configuration ------------------------------------------------------------------------

def _conf_dirs(conf_dirs: list[str] | None) -> list[str]:
    from .network import cni

    return cni._dirs(conf_dirs, cni.CONF_DIR_ENV, cni.DEFAULT_CONF_DIRS)


def _config_files(conf_dir: str) -> list[str]:
    # containerd's and CRI-O's order: every extension together, by name
    try:
        names = [e.name for e in os.scandir(conf_dir)
                 if e.name.endswith(CONF_EXTENSIONS) and e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(conf_dir, n) for n in sorted(names)]


def pod_network(conf_dirs: list[str] | None = None) -> tuple[dict, str]:
    """(conflist, its file): the first valid network configuration of the first conf
    dir that has one, loopback-only configurations skipped (the runtime brings lo up)."""
    from .network import cni

    dirs = _conf_dirs(conf_dirs)
    problems = []
    for conf_dir in dirs:
        for path in _config_files(conf_dir):
            try:
                conflist = cni.load_conflist(path)
            except MiniRunError as e:
                problems.append(str(e))
                continue
            if all(p["type"] == "loopback" for p in conflist["plugins"]):
                continue
            return conflist, path
    why = f" ({'; '.join(problems)})" if problems else ""
    raise NotFound(f"no cni network configuration in {':'.join(dirs)}{why}")


def cni_status(conf_dirs: list[str] | None = None,
               plugin_dirs: list[str] | None = None) -> tuple[bool, str, str]:
    """(ready, reason, message) for the CRI Status condition NetworkReady."""
    from .network import cni

    try:
        conflist, path = pod_network(conf_dirs)
    except NotFound as e:
        return False, "NetworkPluginNotReady", f"cni config uninitialized: {e}"
    dirs = cni._dirs(plugin_dirs, cni.PLUGIN_DIR_ENV, cni.DEFAULT_PLUGIN_DIRS)
    for plugin in conflist["plugins"]:
        types = [plugin["type"]] + ([plugin["ipam"]["type"]] if plugin.get("ipam") else [])
        for ptype in types:
            try:
                cni._find_plugin(conflist["name"], ptype, dirs)
            except NotFound as e:
                return False, "NetworkPluginNotReady", f"{path}: {e}"
    return True, "", ""


def default_conflist(routes: list[tuple[str, str]] | None = None) -> dict:
    """DEFAULT_CONFLIST on the first of DEFAULT_SUBNETS no host route overlaps."""
    from .network.netlink import ipv4_routes

    routes = ipv4_routes() if routes is None else routes
    taken = [ipaddress.IPv4Network(dest, strict=False) for dest, dev in routes
             if not dest.endswith("/0") and dev != "mrpods0"]
    for text in DEFAULT_SUBNETS:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(t) for t in taken):
            conflist = json.loads(json.dumps(DEFAULT_CONFLIST))
            conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": text}]]
            return conflist
    raise MiniRunError("no free /16 for the default pod network among "
                       f"{DEFAULT_SUBNETS[0]}..{DEFAULT_SUBNETS[-1]}: write a conflist")


def write_default_conflist(conf_dir: str | None = None) -> str | None:
    """Write the default pod network into conf_dir (the first conf dir) unless it holds a
    network configuration already; the path written, or None."""
    conf_dir = conf_dir or _conf_dirs(None)[0]
    if _config_files(conf_dir):
        return None
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    path = os.path.join(conf_dir, DEFAULT_CONFLIST_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(default_conflist(), f, indent=2)
        f.write("\n")
    os.rename(tmp, path)
    return path


# --- namespaces, by this thread -----------------------------------------------------------------

_NS_FLAGS = {"net": _sys.CLONE_NEWNET, "ipc": _sys.CLONE_NEWIPC, "uts": _sys.CLONE_NEWUTS}


@contextlib.contextmanager
def _thread_in(targets: dict[str, str | None]):
    """This thread in the namespaces given (kind -> path; None: a new one), back in its
    own on the way out, whatever failed. Other threads of the process are not affected."""
    homes = {}
    try:
        for kind in targets:
            homes[kind] = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            new = 0
            for kind, path in targets.items():
                if path is None:
                    new |= _NS_FLAGS[kind]
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _sys.setns(fd, _NS_FLAGS[kind], path)
                finally:
                    os.close(fd)
            if new:
                _sys.unshare(new)
            yield
        finally:
            for kind, fd in homes.items():
                _sys.setns(fd, _NS_FLAGS[kind], f"this thread's own {kind} namespace")
    finally:
        for fd in homes.values():
            os.close(fd)


def _pin(kind: str, target: str) -> None:
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    _sys.mount(f"/proc/thread-self/ns/{kind}", target, None, _sys.MS_BIND)


def _unpin(path: str) -> None:
    try:
        _sys.umount2(path, _sys.MNT_DETACH)
    except _sys.SysError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _mount_shm(target: str, size: int) -> None:
    os.makedirs(target, mode=0o755, exist_ok=True)
    _sys.mount("shm", target, "tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC,
               f"mode=1777,size={size}")


def _unmount_shm(target: str) -> None:
    """Its tmpfs unmounted (lazily: a container still holding it keeps its files until it
    goes); the empty directory stays for the pod's removal."""
    while _is_pinned(target):
        try:
            _sys.umount2(target, _sys.MNT_DETACH)
        except _sys.SysError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            return


def _is_pinned(path: str) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


# --- the pods ------------------------------------------------------------------------------------

class Pods:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.db.execute(SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        return self.engine.db

    # --- records ---------------------------------------------------------------------------

    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        cur = self.db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def _find(self, pod_id: str) -> dict | None:
        """The record of a full id or of a unique id prefix; None when none matches."""
        if not isinstance(pod_id, str) or not pod_id:
            raise InvalidArgument("a pod id is required")
        rows = self._rows("SELECT * FROM pods WHERE id = ?", (pod_id,))
        if not rows and set(pod_id) <= set("0123456789abcdef"):
            rows = self._rows(f"SELECT * FROM pods WHERE substr(id, 1, {len(pod_id)}) = ?",
                              (pod_id,))
            if len(rows) > 1:
                raise InvalidArgument(f"pod id prefix {pod_id} is ambiguous: it matches "
                                      f"{len(rows)} pods")
        return self._decode(rows[0]) if rows else None

    def get(self, pod_id: str) -> dict:
        rec = self._find(pod_id)
        if rec is None:
            raise NotFound(f"no such pod: {pod_id}")
        return rec

    def list(self) -> list[dict]:
        return [self._decode(r) for r in self._rows("SELECT * FROM pods ORDER BY created_ns")]

    def _decode(self, row: dict) -> dict:
        rec = dict(row)
        for key in ("labels", "annotations", "spec", "additional_ips"):
            rec[key] = json.loads(rec[key])
        if rec["cni_config"]:
            rec["cni_config"] = json.loads(rec["cni_config"])
        if rec["state"] == "ready" and not self._alive(rec):
            # its namespaces went (a reboot) or its pid 1 did: it cannot be used any more
            self._update(rec["id"], state="notready")
            rec["state"] = "notready"
        return rec

    def _alive(self, rec: dict) -> bool:
        spec = rec["spec"]
        pins = [rec["netns"]] if spec["network"] == "pod" else []
        ns_dir = self.ns_dir(rec["id"])
        if spec["ipc"] == "pod":
            pins.append(os.path.join(ns_dir, "ipc"))
        if spec["network"] == "pod":
            pins.append(os.path.join(ns_dir, "uts"))
        if _has_shm(spec):
            pins.append(self.shm_dir(rec["id"]))
        if not all(_is_pinned(p) for p in pins):
            return False
        if rec["holder"]:
            try:
                return self.engine.get(rec["holder"])["status"] == "running"
            except NotFound:
                return False
        return True

    def _update(self, pod_id: str, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE pods SET {sets} WHERE id = ?", (*fields.values(), pod_id))

    def ns_dir(self, pod_id: str) -> str:
        return os.path.join(self.engine.run_root, "pods", pod_id, "ns")

    def shm_dir(self, pod_id: str) -> str:
        """Where the pod's /dev/shm tmpfs is mounted (a pod with its own IPC namespace)."""
        return os.path.join(self.engine.run_root, "pods", pod_id, "shm")

    def files_dir(self, pod_id: str) -> str:
        """hostname, hosts and resolv.conf, for the pod's containers to bind."""
        return os.path.join(self.engine.root, "pods", pod_id)

    def namespaces(self, pod_id: str) -> dict:
        """{"network", "ipc", "uts", "pid"}: a path to join, "host", or None (a private
        one for each container: pid only); "shm": the pod's /dev/shm to bind, "host", or
        None (a pod made before pods had one: each container has its own)."""
        rec = self.get(pod_id)
        spec = rec["spec"]
        ns_dir = self.ns_dir(rec["id"])
        out = {
            "network": rec["netns"] if spec["network"] == "pod" else "host",
            "ipc": os.path.join(ns_dir, "ipc") if spec["ipc"] == "pod" else "host",
            "uts": os.path.join(ns_dir, "uts") if spec["network"] == "pod" else "host",
            "pid": None if spec["pid"] == "container" else "host",
            "shm": "host" if spec["ipc"] == "node" else
                   self.shm_dir(rec["id"]) if _has_shm(spec) else None,
        }
        if spec["pid"] == "pod":
            holder = self.engine.get(rec["holder"]) if rec["holder"] else None
            if holder is None or holder["status"] != "running" or not holder["pid"]:
                raise ContainerStateError(f"pod {rec['id'][:12]}: the process holding its "
                                          "pid namespace is not running")
            out["pid"] = f"/proc/{holder['pid']}/ns/pid"
        return out

    def containers(self, pod_id: str) -> list[str]:
        """The ids of the engine containers of the pod (options.pod), holder excluded."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM containers WHERE json_extract(options, '$.pod') = ? "
            "ORDER BY created", (pod_id,))]

    # --- run ---------------------------------------------------------------------------------

    def run(self, spec: PodSpec) -> str:
        """Make the pod; its id (64 hex). On failure nothing of it is left."""
        check_spec(spec)
        conflist = None
        if spec.network == "pod":
            conflist, _ = pod_network()
        pod_id = os.urandom(32).hex()
        hostname = spec.hostname or (socket.gethostname() if spec.network == "node"
                                     else spec.name[:63].rstrip("-."))
        netns_path = f"/run/netns/{NETNS_PREFIX}{pod_id[:12]}" if spec.network == "pod" else ""
        try:
            self.db.execute(
                "INSERT INTO pods (id, name, namespace, uid, attempt, state, created_ns,"
                " labels, annotations, spec, netns, hostname, cgroup_parent, log_directory,"
                " cni_network, cni_config) VALUES (?, ?, ?, ?, ?, 'notready', ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?, ?)",
                (pod_id, spec.name, spec.namespace, spec.uid, spec.attempt, time.time_ns(),
                 json.dumps(spec.labels), json.dumps(spec.annotations),
                 json.dumps(asdict(spec)), netns_path, hostname,
                 spec.cgroup_parent or DEFAULT_CGROUP_PARENT, spec.log_directory,
                 conflist["name"] if conflist else "",
                 json.dumps(conflist) if conflist else ""))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"pod {spec.name} in namespace {spec.namespace} (uid "
                                f"{spec.uid}, attempt {spec.attempt}) already exists") \
                from None
        try:
            self._make(self.get(pod_id), spec, conflist)
        except BaseException as e:
            try:
                self._teardown(pod_id)
            except Exception as undo:  # noqa: BLE001 - the first error is the one to report
                raise MiniRunError(f"{e}; undoing the pod also failed: {undo}") from e
            raise
        self._update(pod_id, state="ready")
        return pod_id

    def _make(self, rec: dict, spec: PodSpec, conflist: dict | None) -> None:
        pod_id = rec["id"]
        ns_dir = self.ns_dir(pod_id)
        os.makedirs(ns_dir, mode=0o700, exist_ok=True)
        if spec.network == "pod":
            from .network import netns

            _, nsfd, inside = netns.create(os.path.basename(rec["netns"]))
            os.close(nsfd)
            inside.close()
        self._make_ipc_uts(spec, rec, ns_dir)
        if spec.ipc == "pod":
            _mount_shm(self.shm_dir(pod_id), spec.shm_size)
        if conflist is not None:
            self._update(pod_id, cni_attached=1)  # before ADD: a crash in it is undone
            result = self._cni_add(rec, spec, conflist)
            ips = [a.split("/")[0] for a in _cni_addresses(result)]
            ips.sort(key=lambda a: ":" in a)  # IPv4 first, as kubelet expects
            rec["ip"] = ips[0] if ips else ""
            self._update(pod_id, ip=rec["ip"], additional_ips=json.dumps(ips[1:]))
        # after CNI: kubelet's per-interface ones (net.ipv4.conf.eth0.*) need its eth0
        self._write_sysctls(spec, rec, ns_dir)
        self._write_files(spec, rec)
        if spec.pid == "pod":
            self._run_holder(rec, spec)

    def _make_ipc_uts(self, spec: PodSpec, rec: dict, ns_dir: str) -> None:
        targets = {}
        if spec.ipc == "pod":
            targets["ipc"] = None
        if spec.network == "pod":
            targets["uts"] = None
        if not targets:
            return
        with _thread_in(targets):
            if "uts" in targets:
                _sys.sethostname(rec["hostname"])
            for kind in targets:
                _pin(kind, os.path.join(ns_dir, kind))

    def _write_sysctls(self, spec: PodSpec, rec: dict, ns_dir: str) -> None:
        if not spec.sysctls:
            return
        targets = {}
        if spec.network == "pod":
            targets["net"] = rec["netns"]
            targets["uts"] = os.path.join(ns_dir, "uts")
        if spec.ipc == "pod":
            targets["ipc"] = os.path.join(ns_dir, "ipc")
        with _thread_in(targets):
            for name, value in spec.sysctls.items():
                path = "/proc/sys/" + sysctl_path(name, spec)
                try:
                    with open(path, "w") as f:
                        f.write(value)
                except FileNotFoundError:
                    raise InvalidArgument(f"sysctl {name}: no such sysctl") from None
                except OSError as e:
                    raise InvalidArgument(f"sysctl {name}={value}: "
                                          f"{(e.strerror or str(e)).lower()}") from None

    def _cni_cache(self) -> str:
        return os.path.join(self.engine.root, "cni-cache")

    def _cni_add(self, rec: dict, spec: PodSpec, conflist: dict) -> dict:
        from .network import cni

        mappings = [{"hostPort": p.get("host_port", 0),
                     "containerPort": p["container_port"],
                     "protocol": (p.get("protocol") or "tcp").lower(),
                     "hostIP": p.get("host_ip") or ""}
                    for p in spec.port_mappings if p.get("host_port")]
        # what containerd passes: plugins such as calico read the pod from these
        args = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": spec.namespace,
                "K8S_POD_NAME": spec.name, "K8S_POD_INFRA_CONTAINER_ID": rec["id"],
                "K8S_POD_UID": spec.uid}
        args = {k: v for k, v in args.items() if v and ";" not in v and "=" not in v}
        return cni.add(conflist, rec["id"], rec["netns"], "eth0",
                       cache_dir=self._cni_cache(),
                       capability_args={"portMappings": mappings} if mappings else None,
                       cni_args=args)

    def _write_files(self, spec: PodSpec, rec: dict) -> None:
        from .engine import _resolv_conf

        files_dir = self.files_dir(rec["id"])
        os.makedirs(files_dir, mode=0o755, exist_ok=True)
        if spec.network == "node":
            hosts = _read("/etc/hosts")
            resolv = _resolv_conf(spec.dns_servers, spec.dns_searches, spec.dns_options) \
                if spec.dns_servers or spec.dns_searches or spec.dns_options \
                else _read("/etc/resolv.conf")
        else:
            hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            if rec.get("ip"):
                hosts += f"{rec['ip']}\t{rec['hostname']}\n"
            resolv = _resolv_conf(spec.dns_servers, spec.dns_searches, spec.dns_options)
        for name, text in (("hostname", rec["hostname"] + "\n"), ("hosts", hosts),
                           ("resolv.conf", resolv)):
            with open(os.path.join(files_dir, name), "w") as f:
                f.write(text)

    # --- the holder of a shared pid namespace ------------------------------------------------

    def _run_holder(self, rec: dict, spec: PodSpec) -> None:
        from .engine import RunOptions

        for binary in (TINI, BUSYBOX):
            if not os.access(binary, os.X_OK):
                raise MiniRunError(f"a pod sharing its pid namespace needs {binary} "
                                   "(apt-get install tini busybox-static)")
        hid = os.urandom(32).hex()
        name = f"k8s_POD_{spec.name}_{spec.namespace}_{spec.uid}_{spec.attempt}"
        # busybox runs the applet named by argv[1] when its own name starts with
        # "busybox": its comm is then busybox.hold, so a `pgrep sleep` in the pod (as
        # critest runs after a timed-out exec) does not find the holder
        args = ["/pause", "--", "/busybox.hold", "sleep", "inf"]
        opts = dict(RunOptions(command=args, name=name, detach=True).__dict__,
                    holder_of=rec["id"], network="none")
        try:
            self.db.execute(
                "INSERT INTO containers (id, name, image, image_id, command, created, status,"
                " options) VALUES (?, ?, ?, '', ?, ?, 'creating', ?)",
                (hid, name, HOLDER_IMAGE, json.dumps(args), time.time(), json.dumps(opts)))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"the container name {name!r} of the pod's pid namespace "
                                "holder is in use (a container left by another pod?)") \
                from None
        self._update(rec["id"], holder=hid)
        rec["holder"] = hid
        bundle = os.path.join(self.engine.root, "containers", hid)
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(rootfs, mode=0o755)
        for name in ("pause", "busybox.hold"):
            open(os.path.join(rootfs, name), "w").close()
        with open(os.path.join(bundle, "config.json"), "w") as f:
            f.write(json.dumps(self._holder_config(rec, spec, hid, rootfs, args)))
        # SIGKILL: it holds nothing to save, and a TERM sent before tini has blocked its
        # signals is dropped (an ns's pid 1 gets no signal it has no handler for)
        self.engine._update(hid, status="created", stop_signal="KILL")
        self.engine._start_in_daemon(hid)

    def _holder_config(self, rec: dict, spec: PodSpec, hid: str, rootfs: str,
                       args: list[str]) -> dict:
        ns_dir = self.ns_dir(rec["id"])
        namespaces = [{"type": "pid"}, {"type": "mount"}]
        if spec.network == "pod":
            namespaces += [{"type": "network", "path": rec["netns"]},
                           {"type": "uts", "path": os.path.join(ns_dir, "uts")}]
        if spec.ipc == "pod":
            namespaces.append({"type": "ipc", "path": os.path.join(ns_dir, "ipc")})
        caps = {k: [] for k in ("bounding", "effective", "permitted", "inheritable",
                                "ambient")}
        parent = (spec.cgroup_parent or DEFAULT_CGROUP_PARENT).rstrip("/")
        return {
            "ociVersion": "1.0.2",
            "process": {"terminal": False, "user": {"uid": 65535, "gid": 65535},
                        "args": args, "env": ["PATH=/"], "cwd": "/",
                        "capabilities": caps, "noNewPrivileges": True},
            "root": {"path": rootfs, "readonly": True},
            "mounts": [{"destination": "/pause", "type": "bind", "source": TINI,
                        "options": ["bind", "ro", "nosuid", "nodev"]},
                       {"destination": "/busybox.hold", "type": "bind", "source": BUSYBOX,
                        "options": ["bind", "ro", "nosuid", "nodev"]}],
            "linux": {"namespaces": namespaces,
                      "cgroupsPath": f"{parent}/{hid}",
                      "resources": {"devices": [{"allow": False, "access": "rwm"}],
                                    "pids": {"limit": 16}},
                      "maskedPaths": [], "readonlyPaths": []},
            "annotations": {"io.minirun.id": hid, "io.minirun.pod": rec["id"]},
        }

    # --- stop and remove ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, pod_id: str):
        """One stop or remove of a pod at a time (two would DEL the network twice)."""
        locks = os.path.join(self.engine.run_root, "pods", "locks")
        os.makedirs(locks, mode=0o700, exist_ok=True)
        path = os.path.join(locks, pod_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(fd)

    def stop(self, pod_id: str, timeout: float = 0.0) -> str | None:
        """Stop its containers and holder, give its network back (CNI DEL); notready.
        Nothing to do for a pod that is stopped or gone; returns the full id or None.

        The containers get their stop signal and, `timeout` seconds later, SIGKILL: 0 as
        containerd's StopPodSandbox (kubelet has given them their grace period already)."""
        rec = self._find(pod_id)
        if rec is None:
            return None
        with self._locked(rec["id"]):
            rec = self._find(rec["id"])
            if rec is not None:
                self._stop(rec, timeout)
        return rec["id"] if rec else None

    def _stop(self, rec: dict, timeout: float) -> None:
        for cid in self.containers(rec["id"]):
            with contextlib.suppress(NotFound):
                self.engine.stop(cid, timeout)
        if rec["holder"]:
            with contextlib.suppress(NotFound):
                self.engine.stop(rec["holder"], 2.0)
        if rec["cni_attached"]:
            self._cni_del(rec)
            self._update(rec["id"], cni_attached=0)
        _unmount_shm(self.shm_dir(rec["id"]))  # containerd's StopPodSandbox does too
        self._update(rec["id"], state="notready")

    def _cni_del(self, rec: dict) -> None:
        from .network import cni, netns

        conflist = rec["cni_config"]
        if not conflist:
            return
        path = rec["netns"]
        stand_in = None
        if not _is_pinned(path):
            netns.remove(path)  # a file left where the pin was
            stand_in = path = self._stand_in_netns(rec)
        try:
            cni.delete(conflist, rec["id"], path, "eth0", cache_dir=self._cni_cache())
        finally:
            if stand_in:
                netns.remove(stand_in)

    def _stand_in_netns(self, rec: dict) -> str | None:
        """The pod's netns went without a reboot (unpinned by hand): the bridge plugin
        finds the addresses of its masquerade rules on the pod's eth0 only, so its DEL
        gets a netns whose eth0 (a bridge link: any kind will do) has them again."""
        from .network import cni, netns

        result = cni.cached_result(rec["cni_network"], rec["id"], "eth0",
                                   cache_dir=self._cni_cache())
        addrs = [a for a in cni.addresses(result or {}) if "." in a]
        if not addrs:
            return None
        path, nsfd, inside = netns.create(os.path.basename(rec["netns"]))
        try:
            eth0 = inside.add_bridge("eth0", 1500, "minirun pod stand-in")
            for addr in addrs:
                iface = ipaddress.IPv4Interface(addr)
                inside.add_address(eth0, str(iface.ip), iface.network.prefixlen, None,
                                   f"add {addr} to the stand-in eth0")
        except BaseException:
            netns.remove(path)
            raise
        finally:
            os.close(nsfd)
            inside.close()
        return path

    def remove(self, pod_id: str) -> str | None:
        """Remove its containers (forced), stop it, unpin its namespaces, delete its files
        and record. Nothing to do for a pod that is gone; returns the full id or None."""
        rec = self._find(pod_id)
        if rec is None:
            return None
        self._teardown(rec["id"])
        return rec["id"]

    def _teardown(self, pod_id: str) -> None:
        from .image.store import remove_tree

        with self._locked(pod_id) as lock:
            rec = self._find(pod_id)
            if rec is None:
                return
            for cid in self.containers(pod_id):
                with contextlib.suppress(NotFound):
                    self.engine.remove(cid, force=True)
            self._stop(rec, 0.0)
            if rec["holder"]:
                try:
                    holder = self.engine.get(rec["holder"])
                except NotFound:
                    holder = None
                if holder is not None:
                    self.engine.remove(rec["holder"], force=True)
            if rec["netns"]:
                from .network import netns

                netns.remove(rec["netns"])
            ns_dir = self.ns_dir(pod_id)
            for kind in ("ipc", "uts"):
                _unpin(os.path.join(ns_dir, kind))
            remove_tree(os.path.dirname(ns_dir))
            remove_tree(self.files_dir(pod_id))
            self.db.execute("DELETE FROM pods WHERE id = ?", (pod_id,))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)


def _has_shm(spec: dict) -> bool:
    return spec["ipc"] == "pod" and "shm_size" in spec


def _cni_addresses(result: dict) -> list[str]:
    from .network import cni

    return cni.addresses(result)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
