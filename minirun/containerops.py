"""Verbs on a container's record and runtime state beyond create/start/stop/remove, for
the CLI (and whatever else drives the engine): pause and unpause (the cgroup freezer),
rename, update (limits and the restart policy, docker's readings)."""

from __future__ import annotations

import json
import os

from .errors import AlreadyExists, ContainerStateError, InvalidArgument


def pause(engine, name: str) -> None:
    """Freeze a running container's processes."""
    from . import container as ctr

    rec = engine.get(name)
    if rec["status"] != "running":
        raise ContainerStateError(f"container {rec['name']} is not running")
    status = ctr.Container.load(engine.oci_root, rec["id"]).status()
    if status == "paused":
        raise ContainerStateError(f"container {rec['name']} is already paused")
    ctr.pause(engine.oci_root, rec["id"])
    engine.record_object_event("container", "pause", rec["id"])


def unpause(engine, name: str) -> None:
    """Thaw a paused container's processes."""
    from . import container as ctr

    rec = engine.get(name)
    if rec["status"] != "running" or \
            ctr.Container.load(engine.oci_root, rec["id"]).status() != "paused":
        raise ContainerStateError(f"container {rec['name']} is not paused")
    ctr.resume(engine.oci_root, rec["id"])
    engine.record_object_event("container", "unpause", rec["id"])


def rename_container(engine, old: str, new: str) -> None:
    """A new name, unique as the first one (its network endpoint's name too)."""
    import sqlite3

    from .engine import NAME_CHARS

    rec = engine.get(old)
    if not new or not set(new) <= NAME_CHARS or not new[0].isalnum():
        raise InvalidArgument(f"invalid container name {new!r}: use "
                              "[a-zA-Z0-9][a-zA-Z0-9_.-]")
    if new == rec["name"]:
        raise InvalidArgument(f"renaming a container with the same name as its current "
                              f"name ({new})")
    try:
        with engine.db:
            engine.db.execute("BEGIN IMMEDIATE")
            engine._update(rec["id"], name=new)
            try:
                engine.db.execute("UPDATE endpoints SET name = ? WHERE container = ?",
                                  (new, rec["id"]))
            except sqlite3.OperationalError:  # no network was ever used with this root
                pass
            engine.record_object_event("container", "rename", rec["id"], name=new,
                                       oldName="/" + rec["name"])  # docker's
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"the container name {new!r} is already in use") from None


def update_container(engine, name: str, values: dict, warn=None) -> None:
    """docker update: limits (of a running container now, of a stopped one at its next
    start) and the restart policy; `values` by update's flag names (memory, memory_swap,
    memory_reservation, cpus, cpu_shares, cpuset_cpus, pids_limit, restart)."""
    from . import runopts
    from .engine import parse_restart
    from .runflags import check_cpus, check_cpuset, memory_fields

    rec = engine.get(name)
    opts = json.loads(rec["options"])
    resources: dict = {}
    if values.get("memory") or values.get("memory_swap") or \
            values.get("memory_reservation"):
        mem = memory_fields(values.get("memory") or str(opts.get("memory_bytes") or "")
                            or None, values.get("memory_swap"),
                            values.get("memory_reservation"), warn)
        if not values.get("memory"):
            mem.pop("memory_bytes", None)
        resources.update({k: v for k, v in mem.items() if k != "memory" and v is not None})
    if values.get("cpus") is not None:
        cpus = check_cpus(values["cpus"])
        if cpus is not None:
            resources.update(cpu_quota=int(float(cpus) * 100000), cpu_period=100000)
    check_cpuset(values.get("cpuset_cpus"))
    for key in ("cpu_shares", "cpuset_cpus", "pids_limit"):
        if values.get(key) not in (None, ""):
            resources[key] = values[key]
    restart = values.get("restart")
    if restart is not None:
        policy, _ = parse_restart(restart)
        if policy != "no" and opts.get("remove"):
            raise InvalidArgument("Conflicting options: --restart and --rm")
    if not resources and restart is None:
        raise InvalidArgument("you must provide one or more flags when using this command")
    if resources:
        if rec["status"] == "running":
            engine.update_resources(rec["id"], resources)
        else:
            doc = runopts.resources_doc(resources)
            path = os.path.join(engine.root, "containers", rec["id"], "config.json")
            with open(path) as f:
                cfg = json.load(f)
            res = cfg.setdefault("linux", {}).setdefault("resources", {})
            for section, value in doc.items():
                res[section] = {**(res.get(section) or {}), **value}
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(json.dumps(cfg))
            os.replace(tmp, path)
    rec = engine.get(rec["id"])
    opts = {**json.loads(rec["options"]), **({"restart": restart} if restart else {})}
    if rec["status"] != "running":
        opts.update(resources)
    if values.get("memory"):
        opts["memory"] = values["memory"]
    engine._update(rec["id"], options=json.dumps(opts))
