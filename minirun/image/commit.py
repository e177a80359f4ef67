"""`commit`: a container's changes as a new image (its image's layers plus one, the
upper dir as an uncompressed OCI layer), with docker's --change instructions applied to
the config; and the rows of `history`."""

from __future__ import annotations

import copy
import json
import shlex
import tempfile
import time

from ..errors import InvalidArgument

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
# the Dockerfile instructions docker commit --change accepts
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL",
                       "ONBUILD", "USER", "VOLUME", "WORKDIR", "STOPSIGNAL")


def _rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + \
        f".{int(when % 1 * 1e9):09d}Z"


def _json_or_shell(value: str, shell: bool) -> list[str]:
    """An exec form (a JSON array) or a shell form (sh -c VALUE)."""
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return parsed
    return ["/bin/sh", "-c", value] if shell else shlex.split(value)


def _pairs(value: str, what: str) -> dict[str, str]:
    """ENV/LABEL: KEY=VALUE ... (quotes as a shell's), or the old KEY VALUE."""
    words = shlex.split(value)
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise InvalidArgument(f"--change {what} {value!r}: want KEY=VALUE")
        return {words[0]: value.strip()[len(words[0]):].strip()}
    out = {}
    for word in words:
        key, eq, val = word.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"--change {what} {value!r}: want KEY=VALUE")
        out[key] = val
    return out


def apply_changes(config: dict, changes: list[str]) -> dict:
    """The image config's `config` part with docker's --change lines applied."""
    cfg = copy.deepcopy(config)
    for line in changes:
        word, _, value = line.strip().partition(" ")
        kind = word.upper()
        if kind not in CHANGE_INSTRUCTIONS:
            raise InvalidArgument(f"--change {line!r}: {word} is not one of "
                                  f"{', '.join(CHANGE_INSTRUCTIONS)}")
        if kind == "CMD":
            cfg["Cmd"] = _json_or_shell(value, True)
        elif kind == "ENTRYPOINT":
            cfg["Entrypoint"] = _json_or_shell(value, True)
            if "Cmd" in cfg and not any(c.upper().startswith("CMD ") for c in changes):
                cfg["Cmd"] = None  # as docker: a new entrypoint drops the image's Cmd
        elif kind == "ENV":
            env = {e.partition("=")[0]: e.partition("=")[2] for e in cfg.get("Env") or []}
            env.update(_pairs(value, "ENV"))
            cfg["Env"] = [f"{k}={v}" for k, v in env.items()]
        elif kind == "LABEL":
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **_pairs(value, "LABEL")}
        elif kind == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for port in value.split():
                ports[port if "/" in port else f"{port}/tcp"] = {}
            cfg["ExposedPorts"] = ports
        elif kind == "VOLUME":
            vols = dict(cfg.get("Volumes") or {})
            for v in _json_or_shell(value, False):
                vols[v] = {}
            cfg["Volumes"] = vols
        elif kind == "USER":
            cfg["User"] = value.strip()
        elif kind == "WORKDIR":
            cfg["WorkingDir"] = value.strip()
        elif kind == "HEALTHCHECK":
            from ..healthcheck import parse_instruction

            cfg["Healthcheck"] = parse_instruction(value)
        elif kind == "STOPSIGNAL":
            cfg["StopSignal"] = value.strip()
        elif kind == "ONBUILD":
            cfg["OnBuild"] = list(cfg.get("OnBuild") or []) + [value.strip()]
    return {k: v for k, v in cfg.items() if v is not None}


def commit(engine, rec: dict, reference: str | None, changes: list[str], message: str,
           author: str):
    """The new image's record: the container's image's layers plus its upper dir."""
    from ..containerfs import layer_tar
    from .store import ImageStore

    store = ImageStore(engine.root)
    parent = store.get(rec["image_id"])
    now = time.time()
    with tempfile.TemporaryFile() as tmp:
        layer_tar(engine, rec, tmp)
        tmp.seek(0)
        digest = store.put_blob(tmp)
    config = copy.deepcopy(parent.config)
    config["config"] = apply_changes(config.get("config") or {}, changes)
    config["created"] = _rfc3339(now)
    if author:
        config["author"] = author
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    config["rootfs"]["diff_ids"] = list(parent.diff_ids) + [digest]
    entry = {"created": config["created"],
             "created_by": " ".join(json.loads(rec["command"]))}
    if message:
        entry["comment"] = message
    if author:
        entry["author"] = author
    history = list(config.get("history") or [])
    if not history and parent.diff_ids:  # an image without history: one entry a layer
        history = [{"created": parent.created or config["created"]}
                   for _ in parent.diff_ids]
    config["history"] = history + [entry]
    config_digest = store.put_blob(json.dumps(config).encode())
    layers = [{"digest": d["digest"], "media_type": d["media_type"], "size": d["size"]}
              for d in parent.layers]
    layers.append({"digest": digest, "media_type": LAYER_MEDIA_TYPE, "size": 0})
    return store.add_image(None, config_digest, layers, [reference] if reference else [])


def history_rows(record) -> list[dict]:
    """docker history's rows, newest first: id (the image's on the top row, else
    "<missing>"), created, created_by, size, comment."""
    history = list(record.config.get("history") or [])
    sizes = [d.get("size", 0) for d in record.layers]
    if not history:
        history = [{"created": record.created or ""} for _ in sizes]
    rows, layer = [], 0
    for entry in history:
        size = 0
        if not entry.get("empty_layer"):
            size = sizes[layer] if layer < len(sizes) else 0
            layer += 1
        rows.append({"created": entry.get("created") or "", "created_by":
                     entry.get("created_by") or "", "size": size,
                     "comment": entry.get("comment") or ""})
    rows.reverse()
    for i, row in enumerate(rows):
        row["id"] = record.short_id if i == 0 else "<missing>"
    return rows
