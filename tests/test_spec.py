"""config.json model: loading, validation, unsupported fields, defaults, features, mount options."""

import json
import os
import re
import shutil
import subprocess

import pytest

from minirun import spec
from minirun.errors import AlreadyExists, InvalidSpec, NotFound

RUNC = shutil.which("runc")
needs_runc = pytest.mark.skipif(RUNC is None, reason="runc is not on PATH")


def base_config() -> dict:
    cfg = spec.default_spec()
    cfg["process"]["terminal"] = False
    return cfg


def write_config(bundle, cfg) -> None:
    (bundle / "config.json").write_text(json.dumps(cfg, indent=2))


def runc(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RUNC, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


# ---------------------------------------------------------------------------------------
# valid documents


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_default_spec_is_valid_and_fully_supported(rootless):
    cfg = spec.default_spec(rootless)
    spec.validate(cfg)
    assert spec.unsupported(cfg) == []
    assert spec.unknown_capabilities(cfg) == []


def test_load_config_round_trips_the_written_default(tmp_path):
    spec.write_default_spec(str(tmp_path), rootless=False)
    assert spec.load_config(str(tmp_path)) == spec.default_spec()


def test_load_config_accepts_a_full_featured_config(tmp_path):
    cfg = base_config()
    cfg["ociVersion"] = "1.1.0"
    cfg["domainname"] = "example.org"
    cfg["process"].update(
        consoleSize={"height": 24, "width": 80},
        oomScoreAdj=-500,
        user={"uid": 1000, "gid": 1000, "umask": 0o22, "additionalGids": [5, 10]},
    )
    cfg["hooks"] = {
        name: [{"path": "/bin/true", "args": ["true"], "env": ["A=b"], "timeout": 5}]
        for name in spec.HOOK_NAMES
    }
    cfg["annotations"] = {"org.example.key": "value"}
    cfg["linux"].update(
        namespaces=[{"type": t} for t in spec.NAMESPACE_TYPES if t != "user"]
        + [{"type": "user", "path": "/proc/1/ns/user"}],
        cgroupsPath="/minirun/test",
        rootfsPropagation="rslave",
        sysctl={"net.ipv4.ip_forward": "1"},
        devices=[
            {
                "path": "/dev/fuse",
                "type": "c",
                "major": 10,
                "minor": 229,
                "fileMode": 0o666,
                "uid": 0,
                "gid": 0,
            },
            {"path": "/dev/pipe", "type": "p"},
        ],
        resources={
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            ],
            "memory": {"limit": 1 << 30, "swap": -1, "disableOOMKiller": False},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1"},
            "pids": {"limit": 100},
            "blockIO": {
                "weight": 500,
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "network": {"classID": 1, "priorities": [{"name": "eth0", "priority": 5}]},
            "unified": {"memory.high": "max"},
        },
        seccomp=None,
    )
    write_config(tmp_path, cfg)
    assert spec.load_config(str(tmp_path)) == cfg
    assert spec.unsupported(cfg) == []


@pytest.mark.parametrize(
    "version",
    ["1.0.0", "1.0.2-dev", "1.1.0", "1.1.0-rc.3", "1.2.1", "1.3.0", "1.3.0-rc.1", "1.2.0+build.5"],
)
def test_accepted_oci_versions(version):
    """Every 1.x that minirun knows, pre-releases included, without a warning."""
    cfg = base_config()
    cfg["ociVersion"] = version
    spec.validate(cfg)
    assert spec.newer_version_warning(cfg) is None


@pytest.mark.parametrize("version", ["1.4.0", "1.4.0-rc.1", "1.10.2", "1.999.0-dev"])
def test_newer_minor_versions_are_accepted_with_one_warning(tmp_path, capfd, version):
    cfg = base_config()
    cfg["ociVersion"] = version
    write_config(tmp_path, cfg)
    spec.load_config(str(tmp_path))
    err = capfd.readouterr().err.splitlines()
    assert err == [
        (
            f"minirun: warning: config.json: ociVersion {version} is newer than minirun knows "
            "(1.3.0); fields it does not know are refused"
        )
    ]


@pytest.mark.parametrize(
    "version,message",
    [
        ("0.9.0", 'unsupported version "0.9.0" (minirun reads 1.x)'),
        ("2.0.0", 'unsupported version "2.0.0" (minirun reads 1.x)'),
        ("2.0.0-rc.1", 'unsupported version "2.0.0-rc.1" (minirun reads 1.x)'),
        ("1.0", '"1.0" is not a version like 1.2.0'),
        ("1.x.0", '"1.x.0" is not a version like 1.2.0'),
        ("01.0.0", '"01.0.0" is not a version like 1.2.0'),
        ("1.0.0-", '"1.0.0-" is not a version like 1.2.0'),
        ("v1.0.0", '"v1.0.0" is not a version like 1.2.0'),
        ("", '"" is not a version like 1.2.0'),
    ],
)
def test_refused_oci_versions(version, message):
    cfg = base_config()
    cfg["ociVersion"] = version
    with pytest.raises(InvalidSpec) as err:
        spec.validate(cfg)
    assert str(err.value) == f"config.json: ociVersion: {message}"


def test_object_keys_match_case_insensitively_as_go_decodes_them(tmp_path):
    """runc's encoding/json fills `cpu` from "CPU"; map keys (sysctl) keep their case."""
    cfg = base_config()
    linux = cfg.pop("linux")
    linux["Resources"] = {
        "CPU": {"Shares": 512, "QUOTA": 1000},
        "memory": {"Limit": 1 << 24},
        "Devices": [{"Allow": False, "Access": "rwm"}],
    }
    linux["sysctl"] = {"Net.Ipv4.Ip_forward": "1"}
    cfg["Linux"] = linux
    cfg["Process"] = cfg.pop("process")
    cfg["Process"]["User"] = cfg["Process"].pop("user")
    cfg["HOOKS"] = {"Poststop": [{"Path": "/bin/true"}]}
    cfg["mounts"][0] = {"Destination": "/proc", "TYPE": "proc", "source": "proc"}
    write_config(tmp_path, cfg)
    loaded = spec.load_config(str(tmp_path))
    assert loaded["linux"]["resources"] == {
        "cpu": {"shares": 512, "quota": 1000},
        "memory": {"limit": 1 << 24},
        "devices": [{"allow": False, "access": "rwm"}],
    }
    assert loaded["linux"]["sysctl"] == {"Net.Ipv4.Ip_forward": "1"}
    assert loaded["process"]["user"] == {"uid": 0, "gid": 0}
    assert loaded["hooks"] == {"poststop": [{"path": "/bin/true"}]}
    assert loaded["mounts"][0] == {"destination": "/proc", "type": "proc", "source": "proc"}
    assert spec.unsupported(loaded) == []


def test_exact_key_wins_and_later_duplicate_overrides():
    cfg = base_config()
    cfg["linux"]["resources"] = {"pids": {"limit": 5}, "PIDS": {"limit": 7}}
    cfg["hostname"] = "a"
    cfg["HostName"] = "b"
    spec.validate(cfg)
    assert cfg["linux"]["resources"] == {"pids": {"limit": 7}}
    assert cfg["hostname"] == "b"


# ---------------------------------------------------------------------------------------
# broken documents: each must name the JSON path of the problem


def _set(path: str, value):
    """A mutation setting a dotted path (with [i] indexes) in the base config."""

    def mutate(cfg):
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        target = cfg
        for part in parts[:-1]:
            target = target[int(part[1:-1])] if part.startswith("[") else target[part]
        last = parts[-1]
        if last.startswith("["):
            target[int(last[1:-1])] = value
        else:
            target[last] = value

    return mutate


def _delete(path: str):
    def mutate(cfg):
        *parents, last = path.split(".")
        target = cfg
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


def _append(path: str, value):
    def mutate(cfg):
        *parents, last = path.split(".")
        target = cfg
        for part in parents:
            target = target.setdefault(part, {})
        target.setdefault(last, []).append(value)

    return mutate


def _all(*mutations):
    def mutate(cfg):
        for m in mutations:
            m(cfg)

    return mutate


VALID_TEXT = json.dumps(spec.default_spec(), indent="\t")

BROKEN_TEXT = [
    ("truncated", VALID_TEXT[: len(VALID_TEXT) // 2], "config.json: invalid JSON at line "),
    ("truncated-at-end", VALID_TEXT[:-1], "config.json: invalid JSON at line "),
    ("empty-file", "", "config.json: invalid JSON at line 1 column 1: Expecting value"),
    (
        "trailing-comma",
        '{"ociVersion": "1.0.2",}',
        "config.json: invalid JSON at line 1 column 24: ",
    ),
    ("nan", '{"ociVersion": NaN}', "config.json: invalid JSON: NaN"),
    ("top-level-array", "[]", "config.json: expected an object at the top level, got array"),
]


@pytest.mark.parametrize(
    "text,message", [c[1:] for c in BROKEN_TEXT], ids=[c[0] for c in BROKEN_TEXT]
)
def test_broken_json_text_is_refused(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InvalidSpec) as err:
        spec.load_config(str(tmp_path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


BROKEN = [
    (
        "oci-version-missing",
        _delete("ociVersion"),
        "config.json: ociVersion: required field is missing",
    ),
    ("oci-version-number", _set("ociVersion", 1), "ociVersion: expected a string, got number"),
    ("oci-version-2", _set("ociVersion", "2.0.0"), 'ociVersion: unsupported version "2.0.0"'),
    ("oci-version-garbage", _set("ociVersion", "latest"), 'ociVersion: "latest" is not a version'),
    ("root-missing", _delete("root"), "config.json: root: required field is missing"),
    ("root-path-number", _set("root.path", 3), "root.path: expected a string, got number"),
    (
        "root-readonly-string",
        _set("root.readonly", "yes"),
        "root.readonly: expected a boolean, got string",
    ),
    ("process-missing", _delete("process"), "config.json: process: required field is missing"),
    ("args-empty", _set("process.args", []), "process.args: must not be empty"),
    ("args-not-strings", _set("process.args", [1]), "process.args[0]: expected a string"),
    ("cwd-relative", _set("process.cwd", "tmp"), 'process.cwd: "tmp" is not an absolute path'),
    (
        "env-no-equals",
        _append("process.env", "FOO"),
        'process.env[2]: "FOO" is not of the form NAME=VALUE',
    ),
    ("uid-negative", _set("process.user.uid", -1), "process.user.uid: -1 is out of range"),
    (
        "gid-string",
        _set("process.user.gid", "0"),
        "process.user.gid: expected an integer, got string",
    ),
    ("uid-missing", _delete("process.user.uid"), "process.user.uid: required field is missing"),
    (
        "additional-gid-float",
        _set("process.user", {"uid": 0, "gid": 0, "additionalGids": [1.5]}),
        "process.user.additionalGids[0]: expected an integer, got number",
    ),
    (
        "terminal-string",
        _set("process.terminal", "true"),
        "process.terminal: expected a boolean, got string",
    ),
    (
        "console-size-no-width",
        _set("process.consoleSize", {"height": 10}),
        "process.consoleSize.width: required field is missing",
    ),
    (
        "rlimit-unknown",
        _set("process.rlimits[0].type", "RLIMIT_FOO"),
        'process.rlimits[0].type: unknown rlimit type "RLIMIT_FOO"',
    ),
    (
        "rlimit-soft-above-hard",
        _set("process.rlimits[0].soft", 4096),
        "process.rlimits[0]: soft limit 4096 exceeds hard limit 1024",
    ),
    (
        "rlimit-duplicate",
        _append("process.rlimits", {"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1}),
        'process.rlimits[1].type: duplicate rlimit "RLIMIT_NOFILE"',
    ),
    (
        "capabilities-not-list",
        _set("process.capabilities.bounding", "CAP_KILL"),
        "process.capabilities.bounding: expected an array, got string",
    ),
    (
        "capability-number",
        _set("process.capabilities.effective", [5]),
        "process.capabilities.effective[0]: expected a string, got number",
    ),
    (
        "no-new-privs-number",
        _set("process.noNewPrivileges", 1),
        "process.noNewPrivileges: expected a boolean, got number",
    ),
    (
        "oom-score-adj-string",
        _set("process.oomScoreAdj", "-1000"),
        "process.oomScoreAdj: expected an integer, got string",
    ),
    ("hostname-number", _set("hostname", 5), "config.json: hostname: expected a string"),
    (
        "hostname-without-uts",
        _set("linux.namespaces", [{"type": "mount"}]),
        "config.json: hostname: setting a hostname requires a uts namespace",
    ),
    ("mounts-not-list", _set("mounts", {}), "config.json: mounts: expected an array, got object"),
    (
        "mount-relative-destination",
        _set("mounts[0].destination", "proc"),
        'mounts[0].destination: "proc" is not an absolute path',
    ),
    (
        "mount-destination-missing",
        _set("mounts[1]", {"type": "tmpfs"}),
        "mounts[1].destination: required field is missing",
    ),
    (
        "mount-options-string",
        _set("mounts[1].options", "nosuid"),
        "mounts[1].options: expected an array, got string",
    ),
    (
        "hook-relative-path",
        _set("hooks", {"prestart": [{"path": "hook.sh"}]}),
        'hooks.prestart[0].path: "hook.sh" is not an absolute path',
    ),
    (
        "hook-zero-timeout",
        _set("hooks", {"poststop": [{"path": "/bin/true", "timeout": 0}]}),
        "hooks.poststop[0].timeout: timeout must be greater than zero, got 0",
    ),
    (
        "annotation-number",
        _set("annotations", {"a": 1}),
        'config.json: annotations["a"]: expected a string, got number',
    ),
    (
        "namespace-unknown",
        _set("linux.namespaces[2].type", "foo"),
        'config.json: linux.namespaces[2].type: unknown namespace type "foo"',
    ),
    (
        "namespace-duplicate",
        _append("linux.namespaces", {"type": "pid"}),
        'linux.namespaces[5].type: duplicate namespace type "pid"',
    ),
    (
        "namespace-relative-path",
        _set("linux.namespaces[1]", {"type": "network", "path": "run/netns/x"}),
        'linux.namespaces[1].path: "run/netns/x" is not an absolute path',
    ),
    (
        "mapping-missing-size",
        _all(
            _append("linux.namespaces", {"type": "user"}),
            _set("linux.uidMappings", [{"containerID": 0, "hostID": 0}]),
        ),
        "linux.uidMappings[0].size: required field is missing",
    ),
    (
        "mappings-without-userns",
        _set("linux.gidMappings", [{"containerID": 0, "hostID": 0, "size": 1}]),
        "linux.uidMappings: id mappings need a user namespace",
    ),
    (
        "userns-without-mappings",
        _append("linux.namespaces", {"type": "user"}),
        "linux.namespaces: a new user namespace needs uidMappings and gidMappings",
    ),
    (
        "rootfs-propagation-unknown",
        _set("linux.rootfsPropagation", "bogus"),
        'linux.rootfsPropagation: unknown propagation "bogus"',
    ),
    (
        "masked-path-relative",
        _append("linux.maskedPaths", "proc/kcore"),
        'linux.maskedPaths[10]: "proc/kcore" is not an absolute path',
    ),
    (
        "readonly-paths-string",
        _set("linux.readonlyPaths", "/proc/sys"),
        "linux.readonlyPaths: expected an array, got string",
    ),
    (
        "device-type-unknown",
        _set("linux.devices", [{"path": "/dev/x", "type": "x", "major": 1, "minor": 1}]),
        'linux.devices[0].type: unknown device type "x"',
    ),
    (
        "device-without-major",
        _set("linux.devices", [{"path": "/dev/x", "type": "c", "minor": 1}]),
        'linux.devices[0].major: required for device type "c"',
    ),
    (
        "sysctl-number",
        _set("linux.sysctl", {"kernel.shmmax": 1}),
        'linux.sysctl["kernel.shmmax"]: expected a string, got number',
    ),
    (
        "memory-limit-string",
        _set("linux.resources.memory", {"limit": "1g"}),
        "linux.resources.memory.limit: expected an integer, got string",
    ),
    (
        "device-rule-without-allow",
        _set("linux.resources.devices[0]", {"access": "rwm"}),
        "linux.resources.devices[0].allow: required field is missing",
    ),
    (
        "seccomp-without-default-action",
        _set("linux.seccomp", {"syscalls": []}),
        "linux.seccomp.defaultAction: required field is missing",
    ),
    (
        "time-offset-unknown-clock",
        _set("linux.timeOffsets", {"realtime": {"secs": 1}}),
        'linux.timeOffsets["realtime"]: unknown clock "realtime"',
    ),
    (
        "cgroups-path-number",
        _set("linux.cgroupsPath", 7),
        "linux.cgroupsPath: expected a string, got number",
    ),
]


@pytest.mark.parametrize("mutate,message", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_is_refused_naming_the_field(tmp_path, mutate, message):
    cfg = base_config()
    mutate(cfg)
    write_config(tmp_path, cfg)
    with pytest.raises(InvalidSpec) as err:
        spec.load_config(str(tmp_path))
    text = str(err.value)
    assert text.startswith("config.json: ")
    assert message in text
    assert "\n" not in text


def test_missing_config_is_not_found(tmp_path):
    with pytest.raises(NotFound) as err:
        spec.load_config(str(tmp_path))
    assert str(err.value) == f"config.json not found in bundle {tmp_path}"


def test_validate_refuses_a_non_object():
    with pytest.raises(InvalidSpec, match="top level"):
        spec.validate([])


# ---------------------------------------------------------------------------------------
# capabilities


def test_unknown_capability_is_reported_not_refused():
    # runc 1.1.5 runs such a container and logs
    # "ignoring unknown or unavailable capabilities: [CAP_FOO_BAR]": we follow it.
    cfg = base_config()
    cfg["process"]["capabilities"]["bounding"].append("CAP_FOO_BAR")
    cfg["process"]["capabilities"]["inheritable"] = ["cap_kill", "CAP_FOO_BAR"]
    spec.validate(cfg)
    assert spec.unknown_capabilities(cfg) == ["CAP_FOO_BAR", "cap_kill"]


def test_capabilities_above_the_host_last_cap_are_unavailable():
    cfg = base_config()
    cfg["process"]["capabilities"]["permitted"] = ["CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
    assert spec.unknown_capabilities(cfg) == []
    assert spec.unknown_capabilities(cfg, last_cap=38) == ["CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
    assert spec.unknown_capabilities(cfg, last_cap=39) == ["CAP_CHECKPOINT_RESTORE"]


def test_capability_numbers_match_the_kernel_header():
    header = "/usr/include/linux/capability.h"
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed")
    with open(header) as f:
        pattern = r"^#define\s+(CAP_\w+)\s+(\d+)\s*$"
        defined = {name: int(n) for name, n in re.findall(pattern, f.read(), re.MULTILINE)}
    kernel_caps = {n: v for n, v in defined.items() if n not in ("CAP_LAST_CAP",)}
    assert spec.CAPABILITIES == {n: v for n, v in kernel_caps.items() if v <= 40}
    assert sorted(spec.CAPABILITIES.values()) == list(range(41))


# ---------------------------------------------------------------------------------------
# unsupported fields


UNSUPPORTED_CASES = [
    ("seccomp", _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW"}), []),
    ("seccomp-null", _set("linux.seccomp", None), []),
    ("intel-rdt", _set("linux.intelRdt", {"closID": "x"}), ["linux.intelRdt"]),
    ("personality-supported", _set("linux.personality", {"domain": "LINUX32"}), []),
    ("time-offsets", _set("linux.timeOffsets", {"boottime": {"secs": 5}}), ["linux.timeOffsets"]),
    ("mount-label", _set("linux.mountLabel", "system_u:object_r:x:s0"), ["linux.mountLabel"]),
    ("apparmor", _set("process.apparmorProfile", "docker-default"), ["process.apparmorProfile"]),
    ("apparmor-empty", _set("process.apparmorProfile", ""), []),
    ("selinux", _set("process.selinuxLabel", "system_u:system_r:x:s0"), ["process.selinuxLabel"]),
    (
        "io-priority",
        _set("process.ioPriority", {"class": "IOPRIO_CLASS_IDLE", "priority": 0}),
        ["process.ioPriority"],
    ),
    ("rdma", _set("linux.resources.rdma", {"mlx5_1": {"hcaHandles": 3}}), ["linux.resources.rdma"]),
    ("unknown-linux-key", _set("linux.landlock", {"rules": []}), ["linux.landlock"]),
    ("unknown-process-key", _set("process.seccompProfile", "x"), ["process.seccompProfile"]),
    ("extension-keys", _all(_set("linux.x-minirun-debug", True), _set("process.x-note", "a")), []),
    ("unknown-hook", _set("hooks", {"prestop": [{"path": "/bin/true"}]}), ["hooks.prestop"]),
    ("known-hooks", _set("hooks", {"poststop": [{"path": "/bin/true"}]}), []),
    ("tmpcopyup", _set("mounts[1].options", ["nosuid", "tmpcopyup"]), []),
    (
        "idmap-option",
        _set("mounts[1].options", ["nosuid", "idmap"]),
        ['mounts[1].options[1] "idmap"'],
    ),
    (
        "idmapped-mount",
        _set("mounts[0].uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
        ["mounts[0].uidMappings"],
    ),
    (
        "several",
        _all(_set("process.selinuxLabel", "l"), _set("linux.intelRdt", {"closID": "x"})),
        ["process.selinuxLabel", "linux.intelRdt"],
    ),
]


@pytest.mark.parametrize(
    "mutate,expected", [c[1:] for c in UNSUPPORTED_CASES], ids=[c[0] for c in UNSUPPORTED_CASES]
)
def test_unsupported_lists_the_fields_minirun_does_not_implement(mutate, expected):
    cfg = base_config()
    mutate(cfg)
    spec.validate(cfg)
    assert spec.unsupported(cfg) == expected


# ---------------------------------------------------------------------------------------
# default spec, compared with runc


@needs_runc
@pytest.mark.runc
@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_default_spec_is_what_runc_spec_writes(tmp_path, rootless):
    runc_dir = tmp_path / "runc"
    ours_dir = tmp_path / "ours"
    runc_dir.mkdir()
    ours_dir.mkdir()
    result = runc("spec", *(["--rootless"] if rootless else []), cwd=runc_dir)
    assert result.returncode == 0, result.stderr
    runc_text = (runc_dir / "config.json").read_text()

    assert spec.default_spec(rootless) == json.loads(runc_text)
    spec.write_default_spec(str(ours_dir), rootless)
    assert (ours_dir / "config.json").read_text() == runc_text


@needs_runc
@pytest.mark.runc
def test_write_default_spec_refuses_an_existing_config_like_runc(tmp_path):
    spec.write_default_spec(str(tmp_path), rootless=False)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AlreadyExists) as err:
        spec.write_default_spec(str(tmp_path), rootless=True)
    assert (tmp_path / "config.json").read_text() == "{}"
    result = runc("spec", cwd=tmp_path)
    assert result.returncode != 0
    assert str(err.value) in result.stderr
    assert str(err.value) == "File config.json exists. Remove it first"


def test_write_default_spec_into_a_missing_bundle(tmp_path):
    with pytest.raises(NotFound, match="bundle directory .* not found"):
        spec.write_default_spec(str(tmp_path / "absent"), rootless=False)


def test_rootless_default_maps_the_caller(tmp_path):
    cfg = spec.default_spec(rootless=True)
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert cfg["linux"]["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    assert "network" not in [ns["type"] for ns in cfg["linux"]["namespaces"]]
    assert "resources" not in cfg["linux"]


# ---------------------------------------------------------------------------------------
# features


def test_features_document_shape():
    doc = spec.features()
    json.dumps(doc)
    assert doc["ociVersionMin"] == "1.0.0"
    assert doc["ociVersionMax"] == "1.3.0"
    assert doc["hooks"] == [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
    assert doc["mountOptions"] == sorted(doc["mountOptions"])
    assert {"bind", "rbind", "ro", "rro", "rprivate", "nosymfollow"} <= set(doc["mountOptions"])
    assert "tmpcopyup" in doc["mountOptions"]
    assert "idmap" not in doc["mountOptions"]
    linux = doc["linux"]
    assert linux["namespaces"] == [
        "cgroup",
        "ipc",
        "mount",
        "network",
        "pid",
        "time",
        "user",
        "uts",
    ]
    assert len(linux["capabilities"]) == 41
    assert linux["capabilities"][0] == "CAP_CHOWN"
    assert linux["capabilities"][-1] == "CAP_CHECKPOINT_RESTORE"
    assert linux["cgroup"] == {
        "v1": True,
        "v2": True,
        "systemd": False,
        "systemdUser": False,
        "rdma": False,
    }
    assert linux["seccomp"]["enabled"] is True
    assert "SCMP_ACT_ERRNO" in linux["seccomp"]["actions"]
    from minirun import seccomp

    assert ("SCMP_ACT_NOTIFY" in linux["seccomp"]["actions"]) == seccomp.notify_supported()
    assert "SCMP_CMP_MASKED_EQ" in linux["seccomp"]["operators"]
    assert "SCMP_ARCH_X86_64" in linux["seccomp"]["archs"]
    assert linux["apparmor"] == {"enabled": False}
    assert linux["selinux"] == {"enabled": False}
    assert doc["annotations"]["io.github.minirun.version"] == spec.__version__
    assert doc["annotations"]["io.github.seccomp.libseccomp.version"].count(".") == 2


def test_every_advertised_mount_option_is_understood():
    for option in spec.features()["mountOptions"]:
        _, _, data, extra = spec.parse_mount_options([option])
        assert data == "", option
        assert extra["unsupported"] == [], option


@needs_runc
@pytest.mark.runc
def test_features_cover_what_runc_advertises(tmp_path):
    result = runc("features", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)
    ours = spec.features()
    assert set(ours) >= set(theirs) - {"potentiallyUnsafeConfigAnnotations"}
    assert set(theirs["mountOptions"]) <= set(ours["mountOptions"])
    assert ours["linux"]["capabilities"] == theirs["linux"]["capabilities"]
    assert set(theirs["linux"]["namespaces"]) <= set(ours["linux"]["namespaces"])
    assert ours["hooks"] == theirs["hooks"]


# ---------------------------------------------------------------------------------------
# mount options


def test_mount_flag_values_match_the_kernel_header():
    header = "/usr/include/linux/mount.h"
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed")
    with open(header) as f:
        text = f.read()
    defined = {}
    pattern = r"^#define\s+((?:MS|MOUNT_ATTR)_\w+)\s+(?:(0x[0-9a-fA-F]+|\d+)|\(1<<(\d+)\))"
    for name, value, shift in re.findall(pattern, text, re.MULTILINE):
        defined[name] = int(value, 0) if value else 1 << int(shift)
    checked = [n for n in dir(spec) if n.startswith(("MS_", "MOUNT_ATTR_"))]
    assert len(checked) > 30
    for name in checked:
        assert getattr(spec, name) == defined[name], name


MS = spec
MOUNT_CASES = [
    (
        "runc-dev",
        ["nosuid", "strictatime", "mode=755", "size=65536k"],
        MS.MS_NOSUID | MS.MS_STRICTATIME,
        [],
        "mode=755,size=65536k",
        {},
    ),
    ("empty", [], 0, [], "", {}),
    ("defaults", ["defaults"], 0, [], "", {}),
    ("bind", ["bind", "ro"], MS.MS_BIND | MS.MS_RDONLY, [], "", {"bind": True}),
    (
        "rbind-rprivate",
        ["rbind", "nosuid", "rprivate"],
        MS.MS_BIND | MS.MS_REC | MS.MS_NOSUID,
        [MS.MS_PRIVATE | MS.MS_REC],
        "",
        {"bind": True, "recursive_bind": True},
    ),
    ("later-wins", ["ro", "nodev", "rw", "dev"], 0, [], "", {}),
    (
        "propagation-in-order",
        ["shared", "rslave"],
        0,
        [MS.MS_SHARED, MS.MS_SLAVE | MS.MS_REC],
        "",
        {},
    ),
    (
        "recursive-attrs",
        ["rro", "rnosuid", "rnodev"],
        0,
        [],
        "",
        {"attr_set": MS.MOUNT_ATTR_RDONLY | MS.MOUNT_ATTR_NOSUID | MS.MOUNT_ATTR_NODEV},
    ),
    ("recursive-clear", ["rro", "rrw"], 0, [], "", {"attr_clr": MS.MOUNT_ATTR_RDONLY}),
    (
        "recursive-noatime",
        ["rnoatime"],
        0,
        [],
        "",
        {"attr_set": MS.MOUNT_ATTR_NOATIME, "attr_clr": MS.MOUNT_ATTR__ATIME},
    ),
    ("recursive-relatime", ["rrelatime"], 0, [], "", {"attr_clr": MS.MOUNT_ATTR__ATIME}),
    (
        "unsupported",
        ["tmpcopyup", "mode=700", "idmap"],
        0,
        [],
        "mode=700",
        {"copyup": True, "unsupported": ["idmap"]},
    ),
    (
        "devpts",
        ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        MS.MS_NOSUID | MS.MS_NOEXEC,
        [],
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
        {},
    ),
]


@pytest.mark.parametrize(
    "options,flags,propagation,data,extra",
    [c[1:] for c in MOUNT_CASES],
    ids=[c[0] for c in MOUNT_CASES],
)
def test_parse_mount_options(options, flags, propagation, data, extra):
    expected_extra = {
        "bind": False,
        "recursive_bind": False,
        "attr_set": 0,
        "attr_clr": 0,
        "copyup": False,
        "unsupported": [],
    }
    expected_extra.update(extra)
    assert spec.parse_mount_options(options) == (flags, propagation, data, expected_extra)


def test_mount_flag_table_shape():
    for option, (sets, flag) in spec.MOUNT_FLAGS.items():
        assert isinstance(sets, bool) and isinstance(flag, int), option
    assert spec.MOUNT_FLAGS["ro"] == (True, spec.MS_RDONLY)
    assert spec.MOUNT_FLAGS["rw"] == (False, spec.MS_RDONLY)
    assert set(spec.PROPAGATION_FLAGS) == {
        "private",
        "rprivate",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "unbindable",
        "runbindable",
    }


# Fields the runtime-spec added in 1.1 to 1.3 that minirun does not implement: each must
# be refused by name, or ociVersionMax 1.3.0 in `features` would not be true.
NEWER_SPEC_FIELDS = [
    ("process.scheduler", {"policy": "SCHED_OTHER"}),
    ("process.ioPriority", {"class": "IOPRIO_CLASS_BE", "priority": 4}),
    ("process.execCPUAffinity", {"initial": "0"}),
    ("linux.timeOffsets", {"monotonic": {"secs": 1}}),
    ("linux.netDevices", {"eth1": {"name": "eth0"}}),
    ("linux.memoryPolicy", {"mode": "MPOL_BIND", "nodes": "0"}),
    ("linux.intelRdt", {"schemata": ["L3:0=f"], "enableMonitoring": True}),
]


@pytest.mark.parametrize("path,value", NEWER_SPEC_FIELDS, ids=[p for p, _ in NEWER_SPEC_FIELDS])
def test_fields_up_to_spec_1_3_are_refused_by_name(path, value):
    cfg = base_config()
    cfg["ociVersion"] = "1.3.0"
    section, key = path.split(".")
    cfg[section][key] = value
    spec.validate(cfg)
    assert spec.unsupported(cfg) == [path]
