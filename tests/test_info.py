"""`minirun info` against what this host's /proc and tools say, not hard-coded values."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from minirun import __version__, cli
from minirun import info as info_mod
from minirun.errors import MiniRunError, NotFound


@pytest.fixture
def host(monkeypatch):
    monkeypatch.delenv("MINIRUN_CGROUP_ROOT", raising=False)
    monkeypatch.delenv("MINIRUN_CGROUP_DRIVER", raising=False)
    return info_mod.collect()


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def proc_cgroups() -> dict[str, tuple[int, bool]]:
    rows = {}
    for line in read("/proc/cgroups").splitlines()[1:]:
        name, hierarchy, _, enabled = line.split()
        rows[name] = (int(hierarchy), enabled == "1")
    return rows


def fstype_at(path: str) -> str | None:
    out = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", path],
        check=False,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()[-1] if out.returncode == 0 and out.stdout.strip() else None


def mountinfo() -> list[str]:
    # Drop the mount ids (first two fields): only what is mounted where matters.
    return sorted(line.split(" ", 2)[2] for line in read("/proc/self/mountinfo").splitlines())


def test_kernel_release_is_the_running_kernel(host):
    assert host.kernel == read("/proc/sys/kernel/osrelease").strip()


def test_namespaces_are_those_in_proc_self_ns(host):
    present = {n for n in os.listdir("/proc/self/ns") if not n.endswith("_for_children")}
    assert set(host.namespaces) == present
    assert set(host.missing_namespaces) == set(info_mod.NAMESPACE_CONFIG) - present
    for name, reason in host.missing_namespaces.items():
        assert name in reason and "\n" not in reason


def test_cgroup_mode_matches_findmnt(host):
    if fstype_at("/sys/fs/cgroup") == "cgroup2":
        expected = "v2"
    elif fstype_at("/sys/fs/cgroup/unified") == "cgroup2":
        expected = "hybrid"
    else:
        expected = "v1"
    assert host.cgroup.mode == expected
    assert host.cgroup.driver == ("v2" if expected == "v2" else "v1")


def test_v1_controllers_are_the_mounted_hierarchies(host):
    if host.cgroup.mode == "v2":
        pytest.skip("no v1 hierarchy on a pure cgroup v2 host")
    mounted = {
        name for name, (hierarchy, enabled) in proc_cgroups().items() if hierarchy and enabled
    }
    assert set(host.cgroup.v1_controllers) == mounted
    for name, path in host.cgroup.v1_controllers.items():
        assert fstype_at(path) == "cgroup", name
        assert os.path.exists(os.path.join(path, "cgroup.procs")), name


def test_every_kernel_controller_is_usable_or_explained(host):
    cg = host.cgroup
    accounted = set(cg.v1_controllers) | set(cg.v2_controllers) | set(cg.unusable_controllers)
    assert set(proc_cgroups()) <= accounted
    for name, reason in cg.unusable_controllers.items():
        assert name not in cg.v1_controllers and name not in cg.v2_controllers
        assert reason and "\n" not in reason


def test_v2_controllers_are_cgroup_controllers_of_the_v2_mount(host):
    if host.cgroup.v2_mount is None:
        pytest.skip("no cgroup2 mount on this host")
    assert fstype_at(host.cgroup.v2_mount) == "cgroup2"
    listed = read(os.path.join(host.cgroup.v2_mount, "cgroup.controllers")).split()
    assert host.cgroup.v2_controllers == sorted(listed)


def test_missing_cgroup_root_is_reported_not_raised(monkeypatch, tmp_path):
    missing = str(tmp_path / "no-cgroup-here")
    monkeypatch.setenv("MINIRUN_CGROUP_ROOT", missing)
    host = info_mod.collect()
    assert host.cgroup.mode is None
    assert missing in host.cgroup.reason


def test_seccomp_matches_proc_status_and_libseccomp(host):
    feature = host.features["seccomp"]
    in_kernel = "Seccomp:" in read("/proc/self/status")
    try:
        import ctypes

        ctypes.CDLL("libseccomp.so.2")
        has_lib = True
    except OSError:
        has_lib = False
    assert feature.available == (in_kernel and has_lib)
    if feature.available:
        assert re.match(r"libseccomp \d+\.\d+\.\d+", feature.detail)
    else:
        assert feature.reason


def test_user_namespaces_agree_with_unshare_command(host):
    feature = host.features["user_namespaces"]
    works = (
        subprocess.run(["unshare", "--user", "true"], check=False, capture_output=True).returncode
        == 0
    )
    assert feature.available == works, feature.reason
    if works:
        limit = read("/proc/sys/user/max_user_namespaces").strip()
        assert f"max {limit}" in feature.detail


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_overlayfs_agrees_with_a_real_mount_and_leaves_nothing(tmp_path, monkeypatch):
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    options = f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    # The mount lives and dies in unshare's private mount namespace.
    works = (
        subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                options,
                str(tmp_path / "merged"),
            ],
            check=False,
            capture_output=True,
        ).returncode
        == 0
    )
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    mounts_before = mountinfo()

    monkeypatch.delenv("MINIRUN_CGROUP_ROOT", raising=False)
    feature = info_mod.collect().features["overlayfs"]

    assert mountinfo() == mounts_before
    assert {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("minirun-info-")} <= {
        n for n in tmp_before if n.startswith("minirun-info-")
    }
    assert feature.available == works, feature.reason
    if works:
        assert any(line.split()[-1] == "overlay" for line in read("/proc/filesystems").splitlines())


def test_pidfd_agrees_with_pidfd_open(host):
    try:
        os.close(os.pidfd_open(os.getpid()))
        works = True
    except (AttributeError, OSError):
        works = False
    assert host.features["pidfd"].available == works


def test_openat2_available_on_kernels_since_5_6(host):
    if read("/proc/self/status").find("Seccomp:\t0") < 0:
        pytest.skip("this process runs under a seccomp filter that may block openat2")
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", host.kernel).groups())
    feature = host.features["openat2"]
    assert feature.available == ((major, minor) >= (5, 6)), feature.reason


def test_runtimes_are_the_ones_on_path(host):
    for name in ("runc", "crun"):
        runtime = host.runtimes[name]
        assert runtime.path == shutil.which(name)
        if runtime.path:
            assert name in runtime.version


def test_version_flag(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"minirun {__version__}\n"


def test_info_json_from_the_command_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIRUN_CGROUP")}
    out = subprocess.run(
        [sys.executable, "-m", "minirun.cli", "info", "--format", "json"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kernel"] == os.uname().release
    assert data["version"] == __version__
    assert set(data["features"]) == {"seccomp", "user_namespaces", "overlayfs", "pidfd", "openat2"}
    for feature in data["features"].values():
        assert isinstance(feature["available"], bool)
        assert feature["available"] or feature["reason"]


def test_info_text_lists_each_feature(host, capsys, monkeypatch):
    monkeypatch.setattr(info_mod, "collect", lambda: host)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"kernel:       {host.kernel}" in out
    assert f"namespaces:   {' '.join(host.namespaces)}" in out
    for name, feature in host.features.items():
        state = "yes" if feature.available else "no "
        assert re.search(rf"^  {state}  {name.replace('_', ' ')}\s", out, re.MULTILINE), name


def test_missing_feature_shows_its_reason(host, capsys, monkeypatch):
    host.features["openat2"] = info_mod.Feature(False, reason="kernel older than 5.6")
    monkeypatch.setattr(info_mod, "collect", lambda: host)
    assert cli.main(["info"]) == 0
    assert re.search(
        r"^  no   openat2 +kernel older than 5\.6$", capsys.readouterr().out, re.MULTILINE
    )


def test_minirun_error_is_one_line_with_its_exit_code(capsys, monkeypatch):
    class Refused(MiniRunError):
        exit_code = 7

    def fail(error):
        def collect():
            raise error

        return collect

    monkeypatch.setattr(info_mod, "collect", fail(NotFound("no such thing")))
    assert cli.main(["info"]) == 1
    assert capsys.readouterr().err == "minirun: error: no such thing\n"

    monkeypatch.setattr(info_mod, "collect", fail(Refused("refused")))
    assert cli.main(["info"]) == 7
    assert capsys.readouterr().err == "minirun: error: refused\n"


def test_a_bad_template_is_one_line_and_125(capsys):
    assert cli.main(["info", "--format", "{{.KernelVersion"]) == 125
    assert capsys.readouterr().err == ("minirun: error: template parsing error: template: :1: "
                                       "unclosed action\n")


def test_a_template_reads_dockers_fields(capsys):
    assert cli.main(["info", "--format", "{{.KernelVersion}} {{.OSType}}"]) == 0
    assert capsys.readouterr().out == f"{os.uname().release} linux\n"
