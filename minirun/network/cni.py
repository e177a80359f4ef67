"""A CNI driver: runs the standard CNI plugins on a network namespace given by path.

It follows the CNI spec (SPEC.md, versions 0.1.0 to 1.1.0) the way libcni does: a
conflist's plugins run in order for ADD, each getting the previous plugin's result as
`prevResult`; DEL runs them in reverse with the cached ADD result. Plugins are
executables found in the plugin dirs by their `type`; each reads its config on stdin and
the CNI_* variables from a clean environment, and prints a result (or an error object
`{code, msg, details}`) on stdout.

Standard library only: pyroute2 would cost more to import than a whole ADD.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import tempfile

from minirun.errors import AlreadyExists, InvalidArgument, MiniRunError, NotFound

DEFAULT_CONF_DIRS = ["/etc/cni/net.d"]
DEFAULT_PLUGIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"]
CONF_DIR_ENV = "MINIRUN_CNI_CONF_DIR"
PLUGIN_DIR_ENV = "MINIRUN_CNI_PLUGIN_DIR"

# The spec versions whose wire format we know; a conflist may still ask for an older one.
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_NEWEST = tuple(int(p) for p in SUPPORTED_VERSIONS[-1].split("."))

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The spec's rule for network names and container ids.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)\Z")
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
_CLONE_NEWNET = 0x40000000
_CACHE_KIND = "cniCacheV1"


# --- configuration ---------------------------------------------------------------------

def load_conflist(name_or_path: str, conf_dirs: list[str] | None = None) -> dict:
    """Load a network configuration list from a file or, by network name, from the conf
    dirs; a single-plugin .conf comes back as a one-plugin conflist.

    Lookup by name follows libcni: in each dir the .conflist files in lexical order, then
    the .conf and .json files."""
    looks_like_file = name_or_path.endswith((".conflist", ".conf", ".json"))
    if "/" in name_or_path or (looks_like_file and os.path.isfile(name_or_path)):
        if not os.path.isfile(name_or_path):
            raise NotFound(f"cni config {name_or_path} does not exist")
        return _load_file(name_or_path)
    dirs = _dirs(conf_dirs, CONF_DIR_ENV, DEFAULT_CONF_DIRS)
    unreadable = []
    for conf_dir in dirs:
        for path in _conf_files(conf_dir):
            try:
                doc = _read_json(path)
            except InvalidArgument:
                unreadable.append(os.path.basename(path))
                continue
            if isinstance(doc, dict) and doc.get("name") == name_or_path:
                return _load_file(path, doc)
    skipped = f" (skipped unreadable: {', '.join(unreadable)})" if unreadable else ""
    raise NotFound(f"no cni network named {name_or_path} in {':'.join(dirs)}{skipped}")


def _conf_files(conf_dir: str) -> list[str]:
    try:
        names = [e.name for e in os.scandir(conf_dir) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    lists = sorted(n for n in names if n.endswith(".conflist"))
    singles = sorted(n for n in names if n.endswith((".conf", ".json")))
    return [os.path.join(conf_dir, n) for n in lists + singles]


def _read_json(path: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except OSError as e:
        raise InvalidArgument(f"cni config {path}: {e.strerror.lower()}") from None
    except ValueError as e:
        raise InvalidArgument(f"cni config {path}: bad json: {e}") from None


def _load_file(path: str, doc=None) -> dict:
    if doc is None:
        doc = _read_json(path)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"cni config {path}: not a json object")
    if "plugins" not in doc and "type" in doc and not path.endswith(".conflist"):
        # the pre-conflist format: one plugin, its name and version at the top
        doc = {"cniVersion": doc.get("cniVersion"), "name": doc.get("name"), "plugins": [doc]}
    return validate_conflist(doc, path)


def validate_conflist(conflist: dict, source: str = "conflist") -> dict:
    """Check the fields every runtime relies on; return the conflist with its cniVersion
    resolved (a `cniVersions` list picks the newest version we support)."""
    def bad(field: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"cni config {source}: field {field}: {problem}")

    if not isinstance(conflist, dict):
        raise InvalidArgument(f"cni config {source}: not a json object")
    name = conflist.get("name")
    if name is None:
        raise bad("name", "missing")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise bad("name", f"{name!r} is not a valid network name")
    version = _resolve_version(conflist, bad)
    plugins = conflist.get("plugins")
    if plugins is None:
        raise bad("plugins", "missing")
    if not isinstance(plugins, list) or not plugins:
        raise bad("plugins", "must be a non-empty list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise bad(f"plugins[{i}]", "not a json object")
        ptype = plugin.get("type")
        if ptype is None:
            raise bad(f"plugins[{i}].type", "missing")
        if not _valid_type(ptype):
            raise bad(f"plugins[{i}].type", f"{ptype!r} is not a plugin name")
        caps = plugin.get("capabilities", {})
        if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
            raise bad(f"plugins[{i}].capabilities", "must map capability names to booleans")
        ipam = plugin.get("ipam")
        if ipam is not None and not (isinstance(ipam, dict) and _valid_type(ipam.get("type"))):
            raise bad(f"plugins[{i}].ipam.type", "missing or not a plugin name")
    if version != conflist.get("cniVersion"):
        conflist = dict(conflist, cniVersion=version)
    return conflist


def _valid_type(ptype) -> bool:
    # the type names a file in the plugin dirs: no path may escape them
    return isinstance(ptype, str) and ptype not in ("", ".", "..") and "/" not in ptype


def _resolve_version(conflist: dict, bad) -> str:
    version = conflist.get("cniVersion")
    if version is not None and (not isinstance(version, str) or not _VERSION_RE.match(version)):
        raise bad("cniVersion", f"{version!r} is not a version like 1.0.0")
    candidates = [version] if version is not None else []
    versions = conflist.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(
                isinstance(v, str) and _VERSION_RE.match(v) for v in versions):
            raise bad("cniVersions", "must be a list of versions like 1.0.0")
        # as libcni: the newest listed version this runtime implements
        usable = [v for v in versions + candidates if _version(v) <= _NEWEST]
        if usable:
            return max(usable, key=_version)
    if version is None:
        raise bad("cniVersion", "missing")
    if _version(version) > _NEWEST:
        raise bad("cniVersion", f"{version} is newer than this runtime supports "
                                f"({SUPPORTED_VERSIONS[-1]})")
    return version


def _version(v: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def _dirs(given: list[str] | None, env: str, default: list[str]) -> list[str]:
    if given is not None:
        return list(given)
    from_env = os.environ.get(env)
    if from_env:
        return [d for d in from_env.split(":") if d]
    return list(default)


# --- ADD and DEL ----------------------------------------------------------------------

def add(conflist: dict, container_id: str, netns_path: str, ifname: str = "eth0", *,
        plugin_dirs: list[str] | None = None, cache_dir: str,
        capability_args: dict | None = None, cni_args: dict[str, str] | None = None,
        timeout: float = 30) -> dict:
    """Attach the network namespace at `netns_path` to the network: run ADD through the
    chain and return the last plugin's result. The result is cached for `delete`.

    On a plugin's failure the plugins that succeeded are deleted again (reverse order)
    and the error names the network and the plugin."""
    conflist = validate_conflist(conflist)
    name = conflist["name"]
    _check_ids(container_id, ifname)
    kind = _netns_kind(netns_path)
    if kind == "missing":
        raise NotFound(f"cni network {name}: netns {netns_path} does not exist")
    if kind == "not-netns":
        raise InvalidArgument(f"cni network {name}: {netns_path} is not a network namespace")
    cache_file = _cache_path(cache_dir, name, container_id, ifname)
    if os.path.lexists(cache_file):
        # the spec forbids a second ADD for the same key: its DEL would undo the first
        raise AlreadyExists(f"cni network {name}: container {container_id} {ifname} is "
                            f"already attached (cache entry {cache_file}); delete it first")
    dirs = _dirs(plugin_dirs, PLUGIN_DIR_ENV, DEFAULT_PLUGIN_DIRS)
    # every binary is looked up before the first runs, so a typo leaves nothing to undo
    binaries = [_find_plugin(name, p["type"], dirs) for p in conflist["plugins"]]
    for plugin in conflist["plugins"]:
        if isinstance(plugin.get("ipam"), dict):
            _find_plugin(name, plugin["ipam"]["type"], dirs)
    run = _Invocation(name, conflist["cniVersion"], container_id, netns_path, ifname,
                      dirs, capability_args or {}, cni_args or {}, timeout)
    result = None
    done = []
    for plugin, binary in zip(conflist["plugins"], binaries):
        try:
            result = run.plugin("ADD", plugin, binary, prev_result=result)
        except _PluginError as e:
            _undo_add(run, done, result, f"cni network {name}: {e}")
        done.append((plugin, binary))
    try:
        _write_cache(cache_file, {
            "kind": _CACHE_KIND, "networkName": name, "containerId": container_id,
            "ifName": ifname, "netns": netns_path, "config": conflist,
            "capabilityArgs": capability_args or {}, "cniArgs": cni_args or {},
            "result": result,
        })
    except OSError as e:
        # without the cache a later DEL would lack the prevResult: do not keep the network
        _undo_add(run, done, result,
                  f"cni network {name}: cannot write the result cache {cache_file}: "
                  f"{e.strerror.lower()}")
    return result


def delete(conflist: dict, container_id: str, netns_path: str | None, ifname: str = "eth0",
           *, plugin_dirs: list[str] | None = None, cache_dir: str,
           timeout: float = 30) -> None:
    """Detach the container from the network: DEL through the chain in reverse order.

    The cached ADD gives each plugin its prevResult and the same runtimeConfig and
    CNI_ARGS as ADD had; the cached config is used when there is one, since it is what ADD
    ran. A netns that no longer exists is passed as an empty CNI_NETNS (the plugins then
    release what they can). One plugin's failure does not stop the others; the error
    names every failure, and the cache entry stays so that a retry has the prevResult."""
    conflist = validate_conflist(conflist)
    name = conflist["name"]
    _check_ids(container_id, ifname)
    cache_file = _cache_path(cache_dir, name, container_id, ifname)
    cached = _read_cache(cache_file)
    foreign = cached is not None and not _owned_by(cached, name, container_id, ifname)
    if foreign:
        cached = None
    if cached is not None and isinstance(cached.get("config"), dict):
        try:
            conflist = validate_conflist(cached["config"], cache_file)
        except InvalidArgument:
            pass
    if netns_path and _netns_kind(netns_path) != "netns":
        netns_path = None
    dirs = _dirs(plugin_dirs, PLUGIN_DIR_ENV, DEFAULT_PLUGIN_DIRS)
    run = _Invocation(name, conflist["cniVersion"], container_id, netns_path or "", ifname,
                      dirs, (cached or {}).get("capabilityArgs") or {},
                      (cached or {}).get("cniArgs") or {}, timeout)
    prev = None
    # prevResult on DEL came with spec 0.4.0; older plugins would not expect it
    if cached is not None and _version(conflist["cniVersion"]) >= (0, 4, 0):
        prev = cached.get("result")
    plugins = []
    for plugin in conflist["plugins"]:
        try:
            plugins.append((plugin, _find_plugin(name, plugin["type"], dirs)))
        except NotFound:
            plugins.append((plugin, None))
    failures = _delete_plugins(run, plugins, prev)
    if failures:
        raise MiniRunError(f"cni network {name}: delete failed: " + "; ".join(failures))
    if not foreign:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cache_file)


def cached_result(network: str, container_id: str, ifname: str = "eth0", *,
                  cache_dir: str) -> dict | None:
    """The result of the ADD still in effect for this key, or None."""
    cached = _read_cache(_cache_path(cache_dir, network, container_id, ifname))
    return cached.get("result") if _owned_by(cached, network, container_id, ifname) else None


def addresses(result: dict) -> list[str]:
    """The addresses (CIDR) of a CNI result, any spec version."""
    out = []
    for ip in result.get("ips") or []:
        if isinstance(ip, dict) and isinstance(ip.get("address"), str):
            out.append(ip["address"])
    for key in ("ip4", "ip6"):  # the 0.1.0/0.2.0 result format
        old = result.get(key)
        if isinstance(old, dict) and isinstance(old.get("ip"), str):
            out.append(old["ip"])
    return out


def _undo_add(run: _Invocation, done: list, result, message: str) -> None:
    prev = result if _version(run.version) >= (0, 4, 0) else None
    undo = _delete_plugins(run, done, prev)
    if undo:
        message += "; undoing the plugins before it also failed: " + "; ".join(undo)
    raise MiniRunError(message)


def _delete_plugins(run: _Invocation, plugins: list, prev_result) -> list[str]:
    failures = []
    for plugin, binary in reversed(plugins):
        if binary is None:
            failures.append(f"plugin {plugin['type']}: not found in {':'.join(run.dirs)}")
            continue
        try:
            run.plugin("DEL", plugin, binary, prev_result=prev_result)
        except _PluginError as e:
            failures.append(str(e))
    return failures


def _check_ids(container_id: str, ifname: str) -> None:
    if not isinstance(container_id, str) or not _NAME_RE.match(container_id):
        raise InvalidArgument(f"invalid cni container id {container_id!r}")
    if (not isinstance(ifname, str) or ifname in ("", ".", "..") or len(ifname) > 15
            or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname)):
        raise InvalidArgument(f"invalid interface name {ifname!r}")


def _netns_kind(path: str) -> str:
    """'netns', 'missing' or 'not-netns' (a file left after its namespace went away)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "not-netns"
    try:
        return "netns" if fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET else "not-netns"
    except OSError:
        return "not-netns"
    finally:
        os.close(fd)


def _find_plugin(network: str, ptype: str, dirs: list[str]) -> str:
    for d in dirs:
        path = os.path.join(d, ptype)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise NotFound(f"cni network {network}: plugin {ptype} not found in {':'.join(dirs)}")


# --- running one plugin -----------------------------------------------------------------

class _PluginError(Exception):
    """One plugin's failure, as 'plugin TYPE: MSG (code N)'."""


class _Invocation:
    """What stays the same for every plugin of one ADD or DEL (the spec: the same
    environment for each plugin of a list)."""

    def __init__(self, network: str, version: str, container_id: str, netns: str,
                 ifname: str, dirs: list[str], capability_args: dict,
                 cni_args: dict[str, str], timeout: float):
        self.network = network
        self.version = version
        self.dirs = dirs
        self.capability_args = capability_args
        self.timeout = timeout
        self.env = {
            "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in cni_args.items()),
            "CNI_PATH": ":".join(dirs),
        }

    def stdin_for(self, plugin: dict, prev_result) -> dict:
        conf = dict(plugin)
        conf["name"] = self.network
        conf["cniVersion"] = self.version
        if prev_result is not None:
            conf["prevResult"] = prev_result
        else:
            conf.pop("prevResult", None)
        # only what the plugin declares it can take, as libcni
        runtime = {cap: self.capability_args[cap]
                   for cap, wanted in (plugin.get("capabilities") or {}).items()
                   if wanted and cap in self.capability_args}
        if runtime:
            conf["runtimeConfig"] = runtime
        return conf

    def plugin(self, command: str, plugin: dict, binary: str, prev_result=None):
        ptype = plugin["type"]
        stdin = json.dumps(self.stdin_for(plugin, prev_result)).encode()
        env = dict(self.env, CNI_COMMAND=command)
        try:
            proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd="/",
                                    start_new_session=True)
        except OSError as e:
            raise _PluginError(f"plugin {ptype}: cannot run {binary}: "
                               f"{e.strerror.lower()}") from None
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            raise _PluginError(f"plugin {ptype}: {command} timed out after "
                               f"{self.timeout:g}s") from None
        if proc.returncode != 0:
            raise _PluginError(f"plugin {ptype}: {_error_text(out, err, proc.returncode)}")
        if command != "ADD":
            return None
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise _PluginError(f"plugin {ptype}: printed no result object: "
                               f"{_one_line(out.decode(errors='replace'))[:200]!r}")
        return result


def _kill_session(proc: subprocess.Popen) -> None:
    # the plugin runs its own helpers (IPAM, iptables) that would keep the pipes open
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _error_text(out: bytes, err: bytes, status: int) -> str:
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
        msg = _one_line(str(doc.get("msg") or "failed"))
        if doc.get("details"):
            msg += ": " + _one_line(str(doc["details"]))
        code = doc.get("code")
        return f"{msg} (code {code})" if code is not None else msg
    for stream in (err, out):
        lines = [ln.strip() for ln in stream.decode(errors="replace").splitlines() if ln.strip()]
        if lines:
            return f"{lines[-1]} (exit status {status})"
    return f"exit status {status}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the result cache -------------------------------------------------------------------

def _cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    return os.path.join(cache_dir, f"{network}-{container_id}-{ifname}.json")


def _read_cache(path: str) -> dict | None:
    """The cache entry at path; None when missing or unreadable (DEL then goes on
    without it, as libcni does)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _owned_by(doc: dict | None, network: str, container_id: str, ifname: str) -> bool:
    # names may hold dashes, so two keys can share a file name: the entry says whose it is
    return (doc is not None and doc.get("networkName") == network
            and doc.get("containerId") == container_id and doc.get("ifName") == ifname)


def _write_cache(path: str, doc: dict) -> None:
    cache_dir = os.path.dirname(path)
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
