"""minirun.cri.convert: runtime.v1 configs -> PodSpec / RunOptions, checked with real
protobuf messages and no container."""

from __future__ import annotations

import pytest

from minirun.cri import convert
from minirun.errors import InvalidArgument

pb = pytest.importorskip("minirun.cri.api.api_pb2")

IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["cmd", "arg"], "Env": ["A=1"]}
POD_NS = {"network": "/run/netns/minirun-pod-x", "ipc": "/r/pods/x/ns/ipc",
          "uts": "/r/pods/x/ns/uts", "pid": None}
ALL_CAPS = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SETUID"]


def sandbox(**kw) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web", namespace="default", uid="u1", attempt=2),
        hostname="web-host", log_directory="/var/log/pods/default_web_u1",
        labels={"app": "web"}, annotations={"a": "b"})
    _set(cfg, kw)
    return cfg


def _set(msg, fields: dict) -> None:
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(msg, key).extend(value)
        elif isinstance(value, dict):
            getattr(msg, key).update(value)
        elif hasattr(value, "CopyFrom"):
            getattr(msg, key).CopyFrom(value)
        else:
            setattr(msg, key, value)


def container(**kw) -> pb.ContainerConfig:
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="app", attempt=1),
                             image=pb.ImageSpec(image="busybox:latest"))
    _set(cfg, kw)
    return cfg


def with_sc(**sc) -> pb.ContainerConfig:
    return container(linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(**sc)))


def opts(cfg=None, sb=None, image=IMAGE, **kw):
    return convert.run_options(cfg or container(), sb or sandbox(), image,
                               convert.PodContext("p" * 64, POD_NS, "/r/pods/x/files", **kw),
                               all_caps=ALL_CAPS)


# --- command and args ---------------------------------------------------------------------

@pytest.mark.parametrize("command,args,want", [
    ([], [], ["/entry", "cmd", "arg"]),
    ([], ["x"], ["/entry", "x"]),
    (["/bin/sh"], [], ["/bin/sh"]),
    (["/bin/sh"], ["-c", "a b"], ["/bin/sh", "-c", "a b"]),
])
def test_command_args_join_the_image_entrypoint_and_cmd(command, args, want):
    o = opts(container(command=command, args=args))
    assert o.command == want
    assert o.entrypoint == ""  # the engine adds nothing of the image's


def test_no_command_anywhere_is_invalid():
    with pytest.raises(InvalidArgument, match="no command"):
        opts(image={})


def test_empty_string_entrypoint_is_none():
    assert opts(container(args=["a"]), image={"Entrypoint": [""]}).command == ["a"]


# --- names, metadata, env, log path ------------------------------------------------------

def test_name_env_workdir_labels_log_path():
    o = opts(container(envs=[pb.KeyValue(key="K", value="v=1"), pb.KeyValue(key="E")],
                       working_dir="/w", labels={"l": "1"}, annotations={"x": "y"},
                       log_path="app/1.log", tty=True, stdin=True))
    assert o.name == "k8s_app_web_default_u1_1"
    assert convert.parse_container_name(o.name) == ("app", 1)
    assert o.env == ["K=v=1", "E="]
    assert o.workdir == "/w"
    assert o.labels == {"l": "1"} and o.annotations == {"x": "y"}
    assert o.log_path == "/var/log/pods/default_web_u1/app/1.log"
    assert o.tty and o.interactive and o.detach
    assert o.pod == "p" * 64 and o.pod_files == "/r/pods/x/files"
    assert o.hostname is None  # the pod's UTS namespace has it


def test_missing_metadata_is_invalid():
    cfg = container()
    cfg.ClearField("metadata")
    with pytest.raises(InvalidArgument, match="metadata"):
        opts(cfg)
    sb = sandbox()
    sb.ClearField("metadata")
    with pytest.raises(InvalidArgument, match="metadata"):
        opts(sb=sb)


def test_missing_image_is_invalid():
    cfg = container()
    cfg.ClearField("image")
    with pytest.raises(InvalidArgument, match="image"):
        opts(cfg)


def test_relative_log_directory_is_invalid():
    with pytest.raises(InvalidArgument, match="absolute"):
        opts(container(log_path="a.log"), sandbox(log_directory="rel"))


def test_parse_container_name_ignores_other_names():
    assert convert.parse_container_name("minirun_abc") is None
    assert convert.parse_container_name("k8s_a_b_c_d_x") is None


def test_labels_match():
    assert convert.labels_match({"a": "1", "b": "2"}, {"a": "1"})
    assert not convert.labels_match({"a": "1"}, {"a": "2"})
    assert convert.labels_match({}, {})


# --- security context ---------------------------------------------------------------------

def test_users_and_groups():
    def user(**sc):
        o = opts(with_sc(**sc))
        return o.user, o.group

    assert user(run_as_user=pb.Int64Value(value=1000)) == ("1000", None)
    assert user(run_as_user=pb.Int64Value(value=0)) == ("0", None)  # 0 is a value
    assert user(run_as_username="nobody", run_as_group=pb.Int64Value(value=7)) == \
        ("nobody", "7")
    assert user() == (None, None)  # the image's User
    o = opts(with_sc(run_as_user=pb.Int64Value(value=5), supplemental_groups=[10, 20]))
    assert o.group_add == ["10", "20"]
    with pytest.raises(InvalidArgument, match="run_as_group"):
        opts(with_sc(run_as_group=pb.Int64Value(value=7)))
    with pytest.raises(InvalidArgument, match="Strict"):
        opts(with_sc(run_as_user=pb.Int64Value(value=5), supplemental_groups=[10],
                     supplemental_groups_policy=pb.Strict))


def _caps(add=(), drop=()):
    o = opts(with_sc(capabilities=pb.Capability(add_capabilities=list(add),
                                                drop_capabilities=list(drop))))
    return {c for c in convert.DEFAULT_CAPS if c not in o.cap_drop} | set(o.cap_add)


def test_capabilities_add_drop_and_all():
    defaults = set(convert.DEFAULT_CAPS)
    assert _caps() == defaults
    assert _caps(add=["NET_ADMIN"]) == defaults | {"CAP_NET_ADMIN"}
    assert _caps(drop=["CHOWN", "cap_kill"]) == defaults - {"CAP_CHOWN", "CAP_KILL"}
    assert _caps(drop=["ALL"]) == set()
    assert _caps(add=["NET_ADMIN"], drop=["ALL"]) == {"CAP_NET_ADMIN"}
    assert _caps(add=["ALL"], drop=["CHOWN"]) == set(ALL_CAPS) - {"CAP_CHOWN"}
    with pytest.raises(InvalidArgument, match="CAP_NOPE"):
        _caps(add=["NOPE"])


def test_privileged_needs_a_privileged_pod_and_drops_confinement():
    with pytest.raises(InvalidArgument, match="privileged pod"):
        opts(with_sc(privileged=True))
    sb = sandbox(linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(privileged=True)))
    o = opts(with_sc(privileged=True, masked_paths=["/proc/kcore"],
                     capabilities=pb.Capability(drop_capabilities=["ALL"])), sb)
    assert o.privileged and o.cap_drop == [] and o.masked_paths is None
    assert "seccomp=unconfined" in o.security_opt


def test_readonly_rootfs_no_new_privs_masked_paths():
    o = opts(with_sc(readonly_rootfs=True, no_new_privs=True, masked_paths=["/proc/kcore"],
                     readonly_paths=["/proc/sys"]))
    assert o.read_only and o.no_new_privileges
    assert o.masked_paths == ["/proc/kcore"] and o.readonly_paths == ["/proc/sys"]
    o = opts(with_sc())  # procMount Unmasked: kubelet sends empty lists
    assert o.masked_paths == [] and o.readonly_paths == []


def test_seccomp_profiles(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text("{}")
    SP = pb.SecurityProfile

    def seccomp(**sc):
        return [s.split("=", 1)[1] for s in opts(with_sc(**sc)).security_opt
                if s.startswith("seccomp=")]

    assert seccomp() == ["unconfined"]  # "": unconfined, as the API says
    assert seccomp(seccomp=SP(profile_type=SP.RuntimeDefault)) == []  # the default
    assert seccomp(seccomp=SP(profile_type=SP.Unconfined)) == ["unconfined"]
    assert seccomp(seccomp=SP(profile_type=SP.Localhost, localhost_ref=str(profile))) == \
        [str(profile)]
    assert seccomp(seccomp_profile_path="runtime/default") == []
    assert seccomp(seccomp_profile_path="docker/default") == []
    assert seccomp(seccomp_profile_path="unconfined") == ["unconfined"]
    assert seccomp(seccomp_profile_path=f"localhost/{profile}") == [str(profile)]
    for bad in ("localhost/rel.json", f"localhost/{tmp_path}/none.json", "bogus"):
        with pytest.raises(InvalidArgument, match="seccomp"):
            seccomp(seccomp_profile_path=bad)
    with pytest.raises(InvalidArgument, match="seccomp"):
        seccomp(seccomp=SP(profile_type=SP.Localhost, localhost_ref="x.json"))


def test_apparmor_only_unconfined():
    SP = pb.SecurityProfile
    opts(with_sc(apparmor=SP(profile_type=SP.Unconfined)))
    opts(with_sc(apparmor_profile="unconfined"))
    for sc in ({"apparmor": SP(profile_type=SP.RuntimeDefault)},
               {"apparmor": SP(profile_type=SP.Localhost, localhost_ref="p")},
               {"apparmor_profile": "localhost/p"}):
        with pytest.raises(InvalidArgument, match="apparmor.*AppArmor"):
            opts(with_sc(**sc))


def test_apparmor_message_says_whether_the_host_has_it(tmp_path):
    flag = tmp_path / "enabled"
    flag.write_text("Y\n")
    assert convert.apparmor_enabled(str(flag))
    flag.write_text("N\n")
    assert not convert.apparmor_enabled(str(flag))
    assert not convert.apparmor_enabled(str(tmp_path / "none"))


# --- namespaces ---------------------------------------------------------------------------

def _ns(**modes):
    return with_sc(namespace_options=pb.NamespaceOption(**modes))


def test_namespace_modes():
    o = opts(_ns(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))
    assert o.network == "ns:/run/netns/minirun-pod-x"
    assert o.ipc == "ns:/r/pods/x/ns/ipc" and o.uts == "ns:/r/pods/x/ns/uts"
    assert o.pid == ""
    o = opts(_ns(network=pb.NODE, pid=pb.NODE, ipc=pb.NODE))
    assert (o.network, o.pid, o.ipc, o.uts) == ("host", "host", "host", "host")
    shared = dict(POD_NS, pid="/proc/42/ns/pid")
    o = convert.run_options(_ns(pid=pb.POD), sandbox(), IMAGE,
                            convert.PodContext("p", shared), all_caps=ALL_CAPS)
    assert o.pid == "ns:/proc/42/ns/pid"
    o = opts(_ns(pid=pb.TARGET, target_id="c1"), target_pid_ns="/proc/7/ns/pid")
    assert o.pid == "ns:/proc/7/ns/pid"
    with pytest.raises(InvalidArgument, match="TARGET"):
        opts(_ns(pid=pb.TARGET))
    with pytest.raises(InvalidArgument, match="network"):
        opts(_ns(network=pb.CONTAINER))


# --- mounts and devices -------------------------------------------------------------------

def test_mounts_follow_symlinks_and_map_propagation(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    o = opts(container(mounts=[pb.Mount(container_path="/a", host_path=str(link),
                                        readonly=True)]))
    assert o.mounts == [{"destination": "/a", "type": "bind", "source": str(real),
                         "options": ["rbind", "rprivate", "ro"]}]
    assert convert.mounts([
        pb.Mount(container_path="/b", host_path=str(real),
                 propagation=pb.PROPAGATION_HOST_TO_CONTAINER),
        pb.Mount(container_path="/c", host_path=str(real),
                 propagation=pb.PROPAGATION_BIDIRECTIONAL)]) == [
        {"destination": "/b", "type": "bind", "source": str(real),
         "options": ["rbind", "rslave", "rw"]},
        {"destination": "/c", "type": "bind", "source": str(real),
         "options": ["rbind", "rshared", "rw"]}]


def test_what_minirun_does_not_run_is_refused():
    userns = pb.NamespaceOption(userns_options=pb.UserNamespace(
        mode=pb.POD, uids=[pb.IDMapping(host_id=100000, container_id=0, length=65536)]))
    with pytest.raises(InvalidArgument, match="user namespaces"):
        opts(with_sc(namespace_options=userns))
    host = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.NODE))
    assert opts(with_sc(namespace_options=host)).network.startswith("ns:")
    with pytest.raises(InvalidArgument, match="CDI"):
        opts(container(CDI_devices=[pb.CDIDevice(name="vendor.com/gpu=0")]))


def test_bad_mounts_are_invalid(tmp_path):
    for m in (pb.Mount(container_path="/a", host_path=str(tmp_path),
                       uidMappings=[pb.IDMapping(host_id=1, container_id=0, length=1)]),
              pb.Mount(container_path="/a"),
              pb.Mount(container_path="/a", host_path=str(tmp_path), propagation=7),
              pb.Mount(container_path="/a", host_path=str(tmp_path), readonly=False,
                       recursive_read_only=True),
              pb.Mount(container_path="/a", image=pb.ImageSpec(image="busybox"))):
        with pytest.raises(InvalidArgument, match="mount"):
            convert.mounts([m])


def test_devices():
    o = opts(container(devices=[pb.Device(container_path="/dev/xnull", host_path="/dev/null",
                                          permissions="rw"),
                                pb.Device(host_path="/dev/zero")]))
    assert o.devices == [{"host": "/dev/null", "container": "/dev/xnull", "permissions": "rw"},
                         {"host": "/dev/zero", "container": "/dev/zero", "permissions": "rwm"}]


# --- resources ----------------------------------------------------------------------------

def test_hugepage_limits_of_sizes_the_host_has_none_of_are_left_out(tmp_path):
    for size, count in (("2048", "0"), ("1048576", "4")):
        (tmp_path / f"hugepages-{size}kB").mkdir()
        (tmp_path / f"hugepages-{size}kB" / "nr_hugepages").write_text(count + "\n")
    assert convert.host_hugepages("1GB", str(tmp_path)) == 4
    assert convert.host_hugepages("64KB", str(tmp_path)) == 0
    res = pb.LinuxContainerResources(hugepage_limits=[
        pb.HugepageLimit(page_size="2MB", limit=0), pb.HugepageLimit(page_size="1GB", limit=0)])
    # none of 2MB to be had: nothing to deny; 1GB pages are reserved: 0 means none of them
    assert convert.resources(res, str(tmp_path)) == {"hugepage_limits": {"1GB": 0}}
    res.hugepage_limits[0].limit = 4 << 20
    assert convert.resources(res, str(tmp_path))["hugepage_limits"] == {"2MB": 4 << 20,
                                                                         "1GB": 0}
    with pytest.raises(InvalidArgument, match="page size"):
        convert.host_hugepages("2XB", str(tmp_path))


def test_resources():
    res = pb.LinuxContainerResources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=64 << 20,
        oom_score_adj=-997, cpuset_cpus="0", cpuset_mems="0",
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=1 << 21)],
        unified={"memory.high": "max"}, memory_swap_limit_in_bytes=64 << 20)
    assert convert.resources(res) == {
        "cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512,
        "memory_bytes": 64 << 20, "memory_swap": 64 << 20, "oom_score_adj": -997,
        "cpuset_cpus": "0", "cpuset_mems": "0", "hugepage_limits": {"2MB": 1 << 21},
        "unified": {"memory.high": "max"}}
    assert convert.resources(pb.LinuxContainerResources()) == {}
    o = opts(container(linux=pb.LinuxContainerConfig(resources=res)))
    assert o.memory_bytes == 64 << 20 and o.cpu_shares == 512 and o.oom_score_adj == -997
    with pytest.raises(InvalidArgument, match="negative"):
        convert.resources(pb.LinuxContainerResources(cpu_shares=-1))


def test_pod_cgroup_parent_and_sysctls():
    sb = sandbox(linux=pb.LinuxPodSandboxConfig(cgroup_parent="/minirun/kubepods/pod1",
                                                sysctls={"net.ipv4.ip_forward": "1"}))
    o = opts(sb=sb)
    assert o.cgroup_parent == "/minirun/kubepods/pod1"
    assert o.sysctls == {"net.ipv4.ip_forward": "1"}


# --- pods ---------------------------------------------------------------------------------

def test_pod_spec():
    pytest.importorskip("minirun.pods")
    sb = sandbox(dns_config=pb.DNSConfig(servers=["10.0.0.10"], searches=["svc"],
                                         options=["ndots:5"]),
                 port_mappings=[pb.PortMapping(protocol=pb.UDP, container_port=53,
                                               host_port=5353, host_ip="127.0.0.1")],
                 linux=pb.LinuxPodSandboxConfig(
                     cgroup_parent="/minirun/kubepods", sysctls={"kernel.shm_rmid_forced": "1"},
                     security_context=pb.LinuxSandboxSecurityContext(
                         namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))))
    spec = convert.pod_spec(sb, "runc")
    assert (spec.name, spec.namespace, spec.uid, spec.attempt) == ("web", "default", "u1", 2)
    assert spec.hostname == "web-host" and spec.labels == {"app": "web"}
    assert spec.annotations == {"a": "b"}
    assert spec.port_mappings == [{"protocol": "udp", "container_port": 53,
                                   "host_port": 5353, "host_ip": "127.0.0.1"}]
    assert (spec.network, spec.pid, spec.ipc) == ("pod", "container", "pod")
    assert spec.sysctls == {"kernel.shm_rmid_forced": "1"}
    assert spec.cgroup_parent == "/minirun/kubepods" and spec.runtime_handler == "runc"
    assert spec.dns_servers == ["10.0.0.10"] and spec.dns_options == ["ndots:5"]


def test_pod_spec_bad_input():
    pytest.importorskip("minirun.pods")
    sb = sandbox()
    sb.ClearField("metadata")
    with pytest.raises(InvalidArgument, match="metadata"):
        convert.pod_spec(sb)
    # the API says only a pod on the node's network leaves it empty, but critest sends
    # none: the pods code names it (the pod's name), as containerd does (the node's)
    assert convert.pod_spec(sandbox(hostname="")).hostname == ""
    assert convert.pod_spec(sandbox(hostname="", linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE))))).network == "node"
    with pytest.raises(InvalidArgument, match="port"):
        convert.pod_spec(sandbox(port_mappings=[pb.PortMapping(container_port=0,
                                                               host_port=80)]))
    with pytest.raises(InvalidArgument, match="user namespaces"):
        convert.pod_spec(sandbox(linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(userns_options=pb.UserNamespace(
                    mode=pb.POD, gids=[pb.IDMapping(host_id=1, container_id=0,
                                                    length=1)]))))))
