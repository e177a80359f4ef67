"""OCI linux.resources: validation, and the value conversions both drivers share.

`check_resources` validates the whole document before a driver writes anything, so a
malformed value never leaves a half-applied cgroup. It returns a copy with nulls dropped.
The v1 -> v2 conversions follow crun's documented formulas (crun.1, "CGROUP v2"), which
runc uses too.
"""

from __future__ import annotations

from ..errors import InvalidSpec
from ..jsonfast import fold_keys
from .base import warn

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1


def _int(value: object, field: str, lo: int, hi: int) -> int:
    # bool is an int subclass; `true` for a byte count is a spec error, not 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidSpec(f"linux.resources.{field}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidSpec(f"linux.resources.{field}: {value} is out of range [{lo}, {hi}]")
    return value


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(f"linux.resources.{field}: must be true or false, got {value!r}")
    return value


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(f"linux.resources.{field}: must be a string, got {value!r}")
    if "\n" in value:
        raise InvalidSpec(f"linux.resources.{field}: must not contain a newline")
    return value


def _obj(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidSpec(f"linux.resources.{field}: must be an object, got {value!r}")
    return value


def _list(value: object, field: str) -> list:
    if not isinstance(value, list):
        raise InvalidSpec(f"linux.resources.{field}: must be an array, got {value!r}")
    return value


# Value checkers by OCI type. Memory sizes and the CFS quota take -1 for "unlimited";
# any other negative value is meaningless.
def _size(v, f):
    return _int(v, f, -1, INT64_MAX)


def _int64(v, f):
    return _int(v, f, INT64_MIN, INT64_MAX)


def _uint64(v, f):
    return _int(v, f, 0, UINT64_MAX)


def _uint32(v, f):
    return _int(v, f, 0, UINT32_MAX)


def _swappiness(v, f):
    return _int(v, f, 0, 100)


def _blkio_weight(v, f):
    # 0 means "not set" (runc); the kernel range is 10..1000
    value = _int(v, f, 0, 1000)
    if 0 < value < 10:
        raise InvalidSpec(f"linux.resources.{f}: {value} is out of range [10, 1000]")
    return value


def _device_number(v, f):
    return _int(v, f, 0, UINT32_MAX)


_MEMORY = {
    "limit": _size,
    "reservation": _size,
    "swap": _size,
    "kernel": _size,
    "kernelTCP": _size,
    "swappiness": _swappiness,
    "disableOOMKiller": _bool,
    "useHierarchy": _bool,
    "checkBeforeUpdate": _bool,
}
_CPU = {
    "shares": _uint64,
    "quota": _size,
    "burst": _uint64,
    "period": _uint64,
    "realtimeRuntime": _size,
    "realtimePeriod": _uint64,
    "cpus": _str,
    "mems": _str,
    "idle": _int64,
}
_PIDS = {"limit": _int64}
_WEIGHT_DEVICE = {
    "major": _device_number,
    "minor": _device_number,
    "weight": _blkio_weight,
    "leafWeight": _blkio_weight,
}
_THROTTLE_DEVICE = {"major": _device_number, "minor": _device_number, "rate": _uint64}
_HUGEPAGE = {"pageSize": _str, "limit": _uint64}
_PRIORITY = {"name": _str, "priority": _uint32}
_RDMA = {"hcaHandles": _uint32, "hcaObjects": _uint32}
_DEVICE = {"allow": _bool, "type": _str, "major": _int64, "minor": _int64, "access": _str}
THROTTLE_FIELDS = (
    "throttleReadBpsDevice",
    "throttleWriteBpsDevice",
    "throttleReadIOPSDevice",
    "throttleWriteIOPSDevice",
)


def _fields(value: object, field: str, schema: dict, required: tuple = ()) -> dict:
    out = {}
    fold_keys(_obj(value, field), schema)  # "Shares" is "shares", as runc's Go decoder reads it
    for key, item in value.items():
        if key not in schema:
            raise InvalidSpec(f"linux.resources.{field}.{key}: unknown field")
        if item is not None:
            out[key] = schema[key](item, f"{field}.{key}")
    for key in required:
        if key not in out:
            raise InvalidSpec(f"linux.resources.{field}.{key}: required")
    return out


def _entries(value: object, field: str, schema: dict, required: tuple) -> list[dict]:
    return [
        _fields(item, f"{field}[{i}]", schema, required)
        for i, item in enumerate(_list(value, field))
    ]


def check_page_size(size: str, field: str) -> str:
    """OCI pageSize ("2MB", "1GB", "64KB") as it appears in hugetlb file names."""
    digits = size[:-2]
    if not (size[-2:] in ("KB", "MB", "GB") and digits.isdigit() and digits.isascii()):
        raise InvalidSpec(f"linux.resources.{field}: page size {size!r} is not like 2MB or 1GB")
    return size


def check_devices(value: object) -> list[tuple[bool, str, int, int, str]]:
    """Device rules as (allow, type, major, minor, access); -1 is the "*" wildcard."""
    rules = []
    for i, item in enumerate(_list(value, "devices")):
        field = f"devices[{i}]"
        d = _fields(item, field, _DEVICE, ("allow",))
        kind = d.get("type", "a")
        if kind not in ("a", "b", "c"):
            raise InvalidSpec(f"linux.resources.{field}.type: {kind!r} is not a, b or c")
        access = _device_access(d.get("access", ""), field)
        major, minor = d.get("major", -1), d.get("minor", -1)
        for name, number in (("major", major), ("minor", minor)):
            if number < -1:
                raise InvalidSpec(f"linux.resources.{field}.{name}: {number} is negative")
        rules.append((d["allow"], kind, major, minor, access))
    return rules


RESOURCE_KEYS = ("memory", "cpu", "pids", "blockIO", "hugepageLimits", "network", "rdma",
                 "unified", "devices")


def _device_access(access: str, field: str) -> str:
    """OCI device access as the cgroup files take it: r, w and m once each, in that order.

    As runc: any order and repeats are fine, letters other than r, w and m are left out
    ("rwa" is "rw"; a warning names them), and an empty or missing access means all three.
    """
    wanted = "".join(letter for letter in "rwm" if letter in access)
    others = sorted(set(access) - set("rwm"))
    if others:
        if not wanted:
            raise InvalidSpec(f"linux.resources.{field}.access: {access!r} has none of r, w, m")
        warn(f"linux.resources.{field}.access: ignoring {''.join(others)!r} in {access!r} "
             "(only r, w and m mean something, as runc reads it)")
    return wanted or "rwm"


def check_resources(resources: dict | None) -> dict:
    """Validate OCI linux.resources; InvalidSpec names the first bad field."""
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise InvalidSpec(f"linux.resources: must be an object, got {resources!r}")
    out: dict = {}
    fold_keys(resources, RESOURCE_KEYS)
    for key, value in resources.items():
        if value is None:
            continue
        if key == "memory":
            out[key] = _fields(value, key, _MEMORY)
        elif key == "cpu":
            out[key] = _fields(value, key, _CPU)
        elif key == "pids":
            out[key] = _fields(value, key, _PIDS)
        elif key == "blockIO":
            out[key] = _check_block_io(value)
        elif key == "hugepageLimits":
            limits = _entries(value, key, _HUGEPAGE, ("pageSize", "limit"))
            for i, limit in enumerate(limits):
                check_page_size(limit["pageSize"], f"{key}[{i}].pageSize")
            out[key] = limits
        elif key == "network":
            net = _fields(value, key, {"classID": _uint32, "priorities": _list})
            if "priorities" in net:
                net["priorities"] = _entries(
                    net["priorities"], "network.priorities", _PRIORITY, ("name", "priority")
                )
            out[key] = net
        elif key == "rdma":
            out[key] = {
                _str(dev, "rdma"): _fields(limits, f"rdma.{dev}", _RDMA)
                for dev, limits in _obj(value, key).items()
            }
        elif key == "unified":
            out[key] = {
                _str(k, "unified"): _str(v, f"unified.{k}") for k, v in _obj(value, key).items()
            }
        elif key == "devices":
            out[key] = check_devices(value)
        else:
            raise InvalidSpec(f"linux.resources.{key}: unknown field")
    _check_memory_combination(out.get("memory", {}))
    return out


def _check_block_io(value: object) -> dict:
    schema = {
        "weight": _blkio_weight,
        "leafWeight": _blkio_weight,
        "weightDevice": _list,
        **{name: _list for name in THROTTLE_FIELDS},
    }
    blkio = _fields(value, "blockIO", schema)
    if "weightDevice" in blkio:
        blkio["weightDevice"] = _entries(
            blkio["weightDevice"], "blockIO.weightDevice", _WEIGHT_DEVICE, ("major", "minor")
        )
    for name in THROTTLE_FIELDS:
        if name in blkio:
            blkio[name] = _entries(
                blkio[name], f"blockIO.{name}", _THROTTLE_DEVICE, ("major", "minor", "rate")
            )
    return blkio


def _check_memory_combination(memory: dict) -> None:
    limit, swap = memory.get("limit", 0), memory.get("swap", 0)
    if limit > 0 and swap > 0 and swap < limit:
        raise InvalidSpec(
            f"linux.resources.memory.swap: {swap} is below memory.limit {limit} "
            "(swap is memory plus swap)"
        )


def rdma_line(device: str, limits: dict) -> str:
    """An rdma.max line: "mlx4_0 hca_handle=2 hca_object=2000"."""
    parts = [device]
    if "hcaHandles" in limits:
        parts.append(f"hca_handle={limits['hcaHandles']}")
    if "hcaObjects" in limits:
        parts.append(f"hca_object={limits['hcaObjects']}")
    return " ".join(parts)


def limit_value(value: int) -> str:
    """-1 is unlimited: "max" in cgroup v2 files."""
    return "max" if value == -1 else str(value)


def shares_to_weight(shares: int) -> int:
    """cpu.shares [2, 262144] -> cpu.weight [1, 10000]; 0 stays "not set"."""
    if shares == 0:
        return 0
    shares = min(max(shares, 2), 262144)  # the kernel clamps shares the same way
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight [10, 1000] -> io.weight [1, 10000]; 0 stays "not set"."""
    if weight == 0:
        return 0
    return 1 + ((weight - 10) * 9999) // 990


def swap_to_v2(swap: int, limit: int) -> int:
    """OCI memory.swap (memory + swap) -> memory.swap.max (swap alone).

    -1 means unlimited, 0 means not set. Mirrors runc's ConvertMemorySwapToCgroupV2Value.
    """
    if limit == -1 and swap == 0:
        return -1  # unlimited memory without a swap setting: unlimited swap too
    if swap in (-1, 0):
        return swap
    if limit in (0, -1):
        raise InvalidSpec(
            "linux.resources.memory.swap: cannot set a swap limit without a memory limit"
        )
    if swap < limit:
        raise InvalidSpec(f"linux.resources.memory.swap: {swap} is below memory.limit {limit}")
    return swap - limit


def cpu_max(quota: int, period: int) -> str:
    """cpu.max "quota period"; quota -1 (or unset) is "max", an unset period is left out
    so the kernel keeps the current one."""
    value = str(quota) if quota > 0 else "max"
    if period:
        value += f" {period}"
    return value


def pids_max(limit: int) -> str:
    """pids.limit <= 0 is unlimited, as runc maps it (runc issue 4014)."""
    return "max" if limit <= 0 else str(limit)


def device_rule(kind: str, major: int, minor: int, access: str) -> str:
    """A devices.allow / devices.deny line ("c 1:3 rwm")."""
    ma = "*" if major == -1 else str(major)
    mi = "*" if minor == -1 else str(minor)
    return f"{kind} {ma}:{mi} {access}"


# runc's AllowedDevices: what every container may use whatever its rules say, so the OCI
# default spec's deny-all still leaves a working /dev.
DEFAULT_ALLOWED_DEVICES: tuple[tuple[str, int, int, str], ...] = (
    ("c", -1, -1, "m"),  # mknod of any device; opening it is what the rules govern
    ("b", -1, -1, "m"),
    ("c", 1, 3, "rwm"),  # /dev/null
    ("c", 1, 5, "rwm"),  # /dev/zero
    ("c", 1, 7, "rwm"),  # /dev/full
    ("c", 1, 8, "rwm"),  # /dev/random
    ("c", 1, 9, "rwm"),  # /dev/urandom
    ("c", 5, 0, "rwm"),  # /dev/tty
    ("c", 5, 1, "rwm"),  # /dev/console
    ("c", 5, 2, "rwm"),  # /dev/ptmx
    ("c", 136, -1, "rwm"),  # /dev/pts/*
)


def _is_set(value: object) -> bool:
    # runc's convention: a zero, empty or false value leaves the setting alone
    return value not in (None, 0, "", False, [], {})


def wanted_controllers(res: dict) -> dict[str, str]:
    """{controller: field} a validated resources document needs, in v1 controller names.

    Zero and empty values ask for nothing (runc's convention), so a spec full of zeros
    applies on a host that lacks the controllers.
    """
    out: dict[str, str] = {}
    memory = res.get("memory", {})
    if "swappiness" in memory or "useHierarchy" in memory or any(
        _is_set(v) for k, v in memory.items() if k not in ("checkBeforeUpdate", "kernel")
    ):
        out["memory"] = "memory"
    for key, value in res.get("cpu", {}).items():
        if key in ("cpus", "mems"):
            if value:
                out.setdefault("cpuset", f"cpu.{key}")
        elif key in ("idle", "burst") or _is_set(value):
            out.setdefault("cpu", f"cpu.{key}")
    if "limit" in res.get("pids", {}):
        out["pids"] = "pids.limit"
    if any(_is_set(v) for v in res.get("blockIO", {}).values()):
        out["blkio"] = "blockIO"
    if res.get("hugepageLimits"):
        out["hugetlb"] = "hugepageLimits"
    network = res.get("network", {})
    if "classID" in network:
        out["net_cls"] = "network.classID"
    if network.get("priorities"):
        out["net_prio"] = "network.priorities"
    if res.get("rdma"):
        out["rdma"] = "rdma"
    if "devices" in res:
        out["devices"] = "devices"
    return out


def warn_kernel_memory(memory: dict) -> None:
    """runtime-spec deprecates memory.kernel and kernels since 5.16 ignore it; runc
    ignores it with a warning, and so does minirun on both cgroup versions."""
    if memory.get("kernel"):
        warn("linux.resources.memory.kernel is deprecated and ignored")
