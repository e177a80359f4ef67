"""The CNI driver: the stdin and environment each plugin gets (fake plugins), loading
conflists, and real ADD/DEL with Debian's plugins (bridge, host-local, loopback, tuning)
on network namespaces the tests create."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time

import pytest

from minirun.errors import AlreadyExists, InvalidArgument, MiniRunError, NotFound
from minirun.network import cni

REAL_PLUGIN_DIR = "/usr/lib/cni"
CNI_ENV_KEYS = {"PATH", "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME",
                "CNI_ARGS", "CNI_PATH"}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def ip_json(*args: str):
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out) if out.strip() else []


def host_links() -> set[str]:
    return {link["ifname"] for link in ip_json("link")}


def netns_names() -> set[str]:
    return {ns["name"] for ns in ip_json("netns", "list")}


def ours(links: set[str]) -> set[str]:
    """The links these tests can make: their bridges and the bridge plugin's host-side
    veths. Other suites on this host add and remove their own links and namespaces while
    this one runs (the native network's mr<id> veths, minirun-<id> netns), so the checks
    look at these names only."""
    return {n for n in links if n.startswith("mrcni") or re.fullmatch(r"veth[0-9a-f]{8}", n)}


def our_netns(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith("minirun-cnitest-")}


@pytest.fixture(scope="module", autouse=True)
def host_left_as_found():
    """No link and no netns of this module may outlive it, and IPv4 forwarding, which the
    bridge plugin turns on for isGateway (a CNI network's documented effect), is put back."""
    links, netns = ours(host_links()), our_netns(netns_names())
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read()
    try:
        yield
    finally:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(forward)
    # a namespace's links go with it, but the kernel tears it down asynchronously
    wait_until(lambda: ours(host_links()) == links)
    assert ours(host_links()) == links
    assert our_netns(netns_names()) == netns


def wait_until(check, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


# --- fake plugins: what each plugin receives ----------------------------------------------

FAKE_PLUGIN = """#!{python} -I
import json, os, subprocess, sys, time
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
# the environment as exec'd: Python's locale coercion may add LC_CTYPE to os.environ
with open("/proc/self/environ", "rb") as f:
    env = dict(e.decode().split("=", 1) for e in f.read().split(b"\\0") if e)
with open(os.path.join(conf["recordDir"], "calls.jsonl"), "a") as f:
    f.write(json.dumps({{"type": conf["type"], "command": cmd, "stdin": conf,
                        "env": env}}) + "\\n")
behave = conf.get("behave", {{}}).get(cmd, {{}})
if "helper" in behave:
    # a helper in the plugin's session that holds stdout open, as IPAM plugins run
    helper = subprocess.Popen(["sleep", "60"])
    with open(behave["helper"], "w") as f:
        f.write(str(helper.pid))
if "sleep" in behave:
    time.sleep(behave["sleep"])
if "fail" in behave:
    print(json.dumps(dict(cniVersion=conf["cniVersion"], **behave["fail"])))
    sys.exit(1)
if "garbage" in behave:
    sys.stderr.write("a log line\\n" + behave["garbage"] + "\\n")
    sys.exit(2)
if cmd == "ADD":
    result = dict(conf.get("prevResult") or {{"cniVersion": conf["cniVersion"],
                                              "interfaces": [], "ips": []}})
    if "addAddress" in conf:
        result["ips"] = result.get("ips", []) + [{{"address": conf["addAddress"]}}]
    print(json.dumps(result))
"""


class Fakes:
    def __init__(self, root):
        self.dir = str(root / "plugins")
        self.record = str(root / "record")
        self.cache = str(root / "cache")
        os.mkdir(self.dir)
        os.mkdir(self.record)
        script = os.path.join(self.dir, "fake")
        with open(script, "w") as f:
            f.write(FAKE_PLUGIN.format(python=sys.executable))
        os.chmod(script, 0o755)
        for name in ("fake-a", "fake-b", "fake-c"):
            os.symlink("fake", os.path.join(self.dir, name))

    def plugin(self, ptype: str, **extra) -> dict:
        return {"type": ptype, "recordDir": self.record, **extra}

    def calls(self) -> list[dict]:
        path = os.path.join(self.record, "calls.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            calls = [json.loads(line) for line in f]
        os.unlink(path)
        return calls

    def add(self, conflist: dict, cid: str = "c1", netns: str = "/proc/self/ns/net", **kw):
        return cni.add(conflist, cid, netns, plugin_dirs=[self.dir], cache_dir=self.cache,
                       **kw)

    def delete(self, conflist: dict, cid: str = "c1", netns: str | None = "/proc/self/ns/net",
               **kw):
        return cni.delete(conflist, cid, netns, plugin_dirs=[self.dir], cache_dir=self.cache,
                          **kw)

    def cache_file(self, network: str, cid: str = "c1", ifname: str = "eth0") -> str:
        return os.path.join(self.cache, f"{network}-{cid}-{ifname}.json")


@pytest.fixture
def fakes(tmp_path):
    return Fakes(tmp_path)


def chain(fakes: Fakes, version: str = "1.0.0", **behaviours) -> dict:
    plugins = [
        fakes.plugin("fake-a", addAddress="10.99.0.2/24", cniVersion="0.3.1", name="other",
                     capabilities={"portMappings": True, "bandwidth": False}),
        fakes.plugin("fake-b", addAddress="10.99.1.2/24", capabilities={"ips": True}),
        fakes.plugin("fake-c"),
    ]
    for plugin in plugins:
        if plugin["type"] in behaviours:
            plugin["behave"] = behaviours[plugin["type"]]
    return {"cniVersion": version, "name": "fakenet", "plugins": plugins}


def test_add_chains_each_result_into_the_next_plugin(fakes, monkeypatch):
    monkeypatch.setenv("MINIRUN_CNITEST_SENTINEL", "must-not-leak")
    conflist = chain(fakes)
    result = fakes.add(conflist, cni_args={"IgnoreUnknown": "1", "K8S_POD_NAME": "web"})
    calls = fakes.calls()
    assert [(c["type"], c["command"]) for c in calls] == [
        ("fake-a", "ADD"), ("fake-b", "ADD"), ("fake-c", "ADD")]
    first, second, third = (c["stdin"] for c in calls)
    # the list's name and version replace the plugin's own
    assert (first["name"], first["cniVersion"]) == ("fakenet", "1.0.0")
    assert "prevResult" not in first
    assert cni.addresses(second["prevResult"]) == ["10.99.0.2/24"]
    assert cni.addresses(third["prevResult"]) == ["10.99.0.2/24", "10.99.1.2/24"]
    assert result == third["prevResult"]
    assert cni.addresses(result) == ["10.99.0.2/24", "10.99.1.2/24"]
    for call in calls:
        env = call["env"]
        assert set(env) == CNI_ENV_KEYS
        assert env["CNI_CONTAINERID"] == "c1"
        assert env["CNI_NETNS"] == "/proc/self/ns/net"
        assert env["CNI_IFNAME"] == "eth0"
        assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=web"
        assert env["CNI_PATH"] == fakes.dir
    assert cni.cached_result("fakenet", "c1", cache_dir=fakes.cache) == result


def test_runtime_config_holds_only_the_capabilities_a_plugin_declares(fakes):
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    fakes.add(chain(fakes), capability_args={"portMappings": ports,
                                             "bandwidth": {"ingressRate": 1000}})
    a, b, c = (call["stdin"] for call in fakes.calls())
    assert a["runtimeConfig"] == {"portMappings": ports}  # bandwidth is declared false
    assert "runtimeConfig" not in b  # declares ips, which was not given
    assert "runtimeConfig" not in c


def test_delete_runs_in_reverse_with_the_cached_result(fakes):
    conflist = chain(fakes)
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    result = fakes.add(conflist, capability_args={"portMappings": ports},
                       cni_args={"K8S_POD_NAME": "web"})
    fakes.calls()
    fakes.delete(conflist)
    calls = fakes.calls()
    assert [(c["type"], c["command"]) for c in calls] == [
        ("fake-c", "DEL"), ("fake-b", "DEL"), ("fake-a", "DEL")]
    for call in calls:
        assert call["stdin"]["prevResult"] == result
        assert call["env"]["CNI_ARGS"] == "K8S_POD_NAME=web"
    assert calls[2]["stdin"]["runtimeConfig"] == {"portMappings": ports}
    assert not os.path.exists(fakes.cache_file("fakenet"))
    assert cni.cached_result("fakenet", "c1", cache_dir=fakes.cache) is None
    # a second DEL: nothing cached, so no prevResult; still no error
    fakes.delete(conflist)
    again = fakes.calls()
    assert [c["type"] for c in again] == ["fake-c", "fake-b", "fake-a"]
    assert all("prevResult" not in c["stdin"] for c in again)


def test_delete_gives_no_prev_result_before_spec_0_4_0(fakes):
    conflist = chain(fakes, version="0.3.1")
    fakes.add(conflist)
    add_calls = fakes.calls()
    assert "prevResult" in add_calls[1]["stdin"]  # chaining exists since 0.3.0
    fakes.delete(conflist)
    assert all("prevResult" not in c["stdin"] for c in fakes.calls())


def test_delete_with_the_netns_gone_passes_an_empty_netns(fakes, tmp_path):
    conflist = chain(fakes)
    fakes.add(conflist)
    fakes.calls()
    fakes.delete(conflist, netns=str(tmp_path / "gone"))
    assert {c["env"]["CNI_NETNS"] for c in fakes.calls()} == {""}
    fakes.delete(conflist, netns=None)
    assert {c["env"]["CNI_NETNS"] for c in fakes.calls()} == {""}


def test_a_failing_plugin_undoes_the_ones_before_it(fakes):
    fail = {"code": 7, "msg": "bad config", "details": "field x\nis wrong"}
    conflist = chain(fakes, **{"fake-c": {"ADD": {"fail": fail}}})
    with pytest.raises(MiniRunError) as err:
        fakes.add(conflist)
    assert str(err.value) == \
        "cni network fakenet: plugin fake-c: bad config: field x is wrong (code 7)"
    calls = fakes.calls()
    assert [(c["type"], c["command"]) for c in calls] == [
        ("fake-a", "ADD"), ("fake-b", "ADD"), ("fake-c", "ADD"),
        ("fake-b", "DEL"), ("fake-a", "DEL")]
    # the undo knows what was done so far
    assert cni.addresses(calls[3]["stdin"]["prevResult"]) == ["10.99.0.2/24", "10.99.1.2/24"]
    assert not os.path.exists(fakes.cache_file("fakenet"))
    # nothing cached: a new ADD for the same key is allowed
    fakes.add(chain(fakes))


def test_a_failed_undo_is_reported_too(fakes):
    conflist = chain(fakes, **{"fake-b": {"ADD": {"fail": {"code": 11, "msg": "try later"}}},
                               "fake-a": {"DEL": {"garbage": "cannot release"}}})
    with pytest.raises(MiniRunError) as err:
        fakes.add(conflist)
    msg = str(err.value)
    assert msg.startswith("cni network fakenet: plugin fake-b: try later (code 11); ")
    assert "plugin fake-a: cannot release (exit status 2)" in msg
    assert "\n" not in msg


def test_delete_keeps_going_and_names_every_failure(fakes):
    conflist = chain(fakes, **{"fake-b": {"DEL": {"fail": {"code": 5, "msg": "io error"}}},
                               "fake-a": {"DEL": {"garbage": "plugin exploded"}}})
    result = fakes.add(conflist)
    fakes.calls()
    with pytest.raises(MiniRunError) as err:
        fakes.delete(conflist)
    assert [c["type"] for c in fakes.calls()] == ["fake-c", "fake-b", "fake-a"]
    msg = str(err.value)
    assert msg.startswith("cni network fakenet: delete failed: ")
    assert "plugin fake-b: io error (code 5)" in msg
    assert "plugin fake-a: plugin exploded (exit status 2)" in msg
    # per the spec the cache goes only with a successful DEL: a retry still has it
    assert cni.cached_result("fakenet", "c1", cache_dir=fakes.cache) == result


def test_a_hung_plugin_is_killed_with_its_helpers(fakes, tmp_path):
    helper_pid_file = str(tmp_path / "helper.pid")
    conflist = chain(fakes, **{"fake-b": {"ADD": {"sleep": 60, "helper": helper_pid_file}}})
    start = time.monotonic()
    with pytest.raises(MiniRunError, match=r"plugin fake-b: ADD timed out after 1s"):
        fakes.add(conflist, timeout=1)
    assert time.monotonic() - start < 10
    with open(helper_pid_file) as f:
        helper = int(f.read())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{helper}") and time.monotonic() < deadline:
        with open(f"/proc/{helper}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    if os.path.exists(f"/proc/{helper}"):
        with open(f"/proc/{helper}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
    # fake-a was undone
    assert [(c["type"], c["command"]) for c in fakes.calls()][-1] == ("fake-a", "DEL")


def test_a_missing_plugin_binary_runs_nothing(fakes):
    conflist = chain(fakes)
    conflist["plugins"][1]["type"] = "mr-no-such-plugin"
    with pytest.raises(NotFound) as err:
        fakes.add(conflist)
    assert str(err.value) == (f"cni network fakenet: plugin mr-no-such-plugin not found in "
                              f"{fakes.dir}")
    conflist = chain(fakes)
    conflist["plugins"][0]["ipam"] = {"type": "mr-no-such-ipam"}
    with pytest.raises(NotFound, match="plugin mr-no-such-ipam not found"):
        fakes.add(conflist)
    assert fakes.calls() == []
    assert not os.path.exists(fakes.cache_file("fakenet"))


def test_plugin_dirs_come_from_the_environment(fakes, monkeypatch):
    monkeypatch.setenv(cni.PLUGIN_DIR_ENV, "/nonexistent:" + fakes.dir)
    cni.add(chain(fakes), "c1", "/proc/self/ns/net", cache_dir=fakes.cache)
    assert {c["env"]["CNI_PATH"] for c in fakes.calls()} == {"/nonexistent:" + fakes.dir}


def test_a_second_add_for_the_same_key_is_refused(fakes):
    conflist = chain(fakes)
    fakes.add(conflist)
    fakes.calls()
    with pytest.raises(AlreadyExists, match="c1 eth0 is already attached"):
        fakes.add(conflist)
    assert fakes.calls() == []
    fakes.add(conflist, cid="c2")
    fakes.add(conflist, ifname="net1")


def test_add_checks_its_arguments(fakes, tmp_path):
    conflist = chain(fakes)
    with pytest.raises(InvalidArgument, match="invalid cni container id"):
        fakes.add(conflist, cid="../x")
    with pytest.raises(InvalidArgument, match="invalid interface name"):
        fakes.add(conflist, ifname="a" * 16)
    with pytest.raises(NotFound, match="netns .*/gone does not exist"):
        fakes.add(conflist, netns=str(tmp_path / "gone"))
    (tmp_path / "plain").write_text("")
    with pytest.raises(InvalidArgument, match="plain is not a network namespace"):
        fakes.add(conflist, netns=str(tmp_path / "plain"))
    assert fakes.calls() == []


def test_a_plugin_printing_no_result_is_an_error(fakes, tmp_path):
    script = os.path.join(fakes.dir, "silent")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho not json\n")
    os.chmod(script, 0o755)
    conflist = {"cniVersion": "1.0.0", "name": "fakenet",
                "plugins": [fakes.plugin("fake-a"), {"type": "silent"}]}
    with pytest.raises(MiniRunError, match="plugin silent: printed no result object: 'not json'"):
        fakes.add(conflist)
    assert [(c["type"], c["command"]) for c in fakes.calls()] == [
        ("fake-a", "ADD"), ("fake-a", "DEL")]


# --- loading conflists ---------------------------------------------------------------------

def write(path, doc) -> str:
    with open(path, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def conflist_doc(name: str, ptype: str = "bridge") -> dict:
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": ptype}]}


def test_load_by_path_and_a_single_plugin_conf_becomes_a_list(tmp_path):
    doc = conflist_doc("one")
    assert cni.load_conflist(write(tmp_path / "a.conflist", doc)) == doc
    single = {"cniVersion": "0.4.0", "name": "solo", "type": "bridge", "bridge": "x"}
    assert cni.load_conflist(write(tmp_path / "b.conf", single)) == {
        "cniVersion": "0.4.0", "name": "solo", "plugins": [single]}
    with pytest.raises(NotFound, match="cni config .*/missing.conflist does not exist"):
        cni.load_conflist(str(tmp_path / "missing.conflist"))


def test_load_by_name_reads_files_in_libcni_order(tmp_path, monkeypatch):
    write(tmp_path / "20-b.conflist", conflist_doc("net", "second"))
    write(tmp_path / "10-a.conflist", conflist_doc("net", "first"))
    write(tmp_path / "00-c.conf", {"cniVersion": "1.0.0", "name": "net", "type": "single"})
    write(tmp_path / "05-d.json", {"cniVersion": "1.0.0", "name": "other", "type": "single"})
    write(tmp_path / "01-broken.conflist", "{not json")
    assert cni.load_conflist("net", [str(tmp_path)])["plugins"] == [{"type": "first"}]
    assert cni.load_conflist("other", [str(tmp_path)])["plugins"][0]["type"] == "single"
    monkeypatch.setenv(cni.CONF_DIR_ENV, f"/nonexistent:{tmp_path}")
    assert cni.load_conflist("net")["plugins"] == [{"type": "first"}]
    with pytest.raises(NotFound) as err:
        cni.load_conflist("nosuch")
    assert str(err.value) == (f"no cni network named nosuch in /nonexistent:{tmp_path} "
                              f"(skipped unreadable: 01-broken.conflist)")


@pytest.mark.parametrize("doc, problem", [
    ("{not json", "bad json: Expecting property name"),
    ([1, 2], "not a json object"),
    ({"cniVersion": "1.0.0", "name": "n"}, "field plugins: missing"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "field plugins: must be a non-empty"),
    ({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "field name: missing"),
    ({"cniVersion": "1.0.0", "name": "bad name", "plugins": [{"type": "x"}]},
     "field name: 'bad name' is not a valid network name"),
    ({"name": "n", "plugins": [{"type": "x"}]}, "field cniVersion: missing"),
    ({"cniVersion": "1.0", "name": "n", "plugins": [{"type": "x"}]},
     "field cniVersion: '1.0' is not a version"),
    ({"cniVersion": "9.0.0", "name": "n", "plugins": [{"type": "x"}]},
     "field cniVersion: 9.0.0 is newer than this runtime supports"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x"}, {"mtu": 1}]},
     r"field plugins\[1\].type: missing"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]},
     r"field plugins\[0\].type: '../../bin/sh' is not a plugin name"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x", "ipam": {}}]},
     r"field plugins\[0\].ipam.type: missing"),
    ({"cniVersion": "1.0.0", "name": "n",
      "plugins": [{"type": "x", "capabilities": {"portMappings": "yes"}}]},
     r"field plugins\[0\].capabilities"),
])
def test_a_malformed_conflist_names_file_and_problem(tmp_path, doc, problem):
    path = write(tmp_path / "net.conflist", doc)
    with pytest.raises(InvalidArgument, match=f"^cni config {path}: {problem}"):
        cni.load_conflist(path)


def test_cni_versions_picks_the_newest_supported(tmp_path):
    doc = {"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "0.3.1", "9.9.9"], "name": "n",
           "plugins": [{"type": "x"}]}
    assert cni.load_conflist(write(tmp_path / "n.conflist", doc))["cniVersion"] == "1.0.0"


def test_addresses_reads_every_result_format():
    assert cni.addresses({"ips": [{"address": "10.1.0.2/24", "interface": 1},
                                  {"address": "fd00::2/64"}]}) == ["10.1.0.2/24", "fd00::2/64"]
    assert cni.addresses({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/24"}}) == [
        "10.1.0.2/24"]
    assert cni.addresses({"cniVersion": "1.0.0"}) == []


# --- the real plugins ------------------------------------------------------------------------

def free_subnet() -> str:
    used = " ".join(r.get("dst", "") for r in ip_json("route"))
    for _ in range(50):
        third = secrets.randbelow(256)
        if f"10.250.{third}." not in used:
            return f"10.250.{third}"
    raise AssertionError("no free 10.250.x.0/24 subnet")


class BridgeNet:
    def __init__(self, root):
        self.bridge = "mrcni" + secrets.token_hex(3)
        self.prefix = free_subnet()
        self.data_dir = str(root / "ipam")
        self.cache = str(root / "cache")
        self.name = "mrcnitest-" + secrets.token_hex(3)
        self.conflist = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": True,
                "ipMasq": False, "hairpinMode": False,
                "ipam": {"type": "host-local", "subnet": f"{self.prefix}.0/24",
                         "dataDir": self.data_dir, "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        }
        self.loopback = {"cniVersion": "1.0.0", "name": self.name + "-lo",
                         "plugins": [{"type": "loopback"}]}

    def leases(self) -> set[str]:
        d = os.path.join(self.data_dir, self.name)
        if not os.path.isdir(d):
            return set()
        return {n for n in os.listdir(d) if n.startswith(self.prefix + ".")}

    def add(self, conflist: dict, cid: str, ns: str, **kw) -> dict:
        return cni.add(conflist, cid, f"/run/netns/{ns}", plugin_dirs=[REAL_PLUGIN_DIR],
                       cache_dir=self.cache, **kw)

    def delete(self, conflist: dict, cid: str, ns: str | None, **kw) -> None:
        cni.delete(conflist, cid, ns and f"/run/netns/{ns}", plugin_dirs=[REAL_PLUGIN_DIR],
                   cache_dir=self.cache, **kw)


@pytest.fixture
def net(tmp_path):
    n = BridgeNet(tmp_path)
    try:
        yield n
    finally:
        # CNI leaves the bridge to its owner
        subprocess.run(["ip", "link", "del", n.bridge], check=False, capture_output=True)


@pytest.fixture
def make_netns():
    made = []

    def make() -> str:
        name = "minirun-cnitest-" + secrets.token_hex(4)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def ns_links(ns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json("-n", ns, "link")}


def host_veth(result: dict) -> str:
    hosts = [i["name"] for i in result["interfaces"] if not i.get("sandbox")]
    veths = [n for n in hosts if n.startswith("veth")]
    assert len(veths) == 1, result
    return veths[0]


@needs_root
@pytest.mark.root
def test_two_namespaces_on_one_bridge_reach_each_other(net, make_netns):
    nses = [make_netns(), make_netns()]
    results = []
    for i, ns in enumerate(nses):
        results.append(net.add(net.conflist, f"cnitest-{i}", ns))
        net.add(net.loopback, f"cnitest-{i}", ns, ifname="lo")
    ips = []
    for ns, result in zip(nses, results):
        (address,) = cni.addresses(result)
        ip, prefixlen = address.split("/")
        assert ip.startswith(net.prefix + ".") and prefixlen == "24"
        ips.append(ip)
        addrs = ip_json("-n", ns, "addr", "show", "dev", "eth0")[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [
            (ip, 24)]
        routes = ip_json("-n", ns, "route")
        assert {"dst": "default", "gateway": f"{net.prefix}.1", "dev": "eth0"}.items() <= \
            next(r for r in routes if r["dst"] == "default").items()
        assert "UP" in ns_links(ns)["lo"]["flags"]
        veth = host_veth(result)
        assert ip_json("link", "show", veth)[0]["master"] == net.bridge
    assert ips[0] != ips[1]
    assert net.leases() == set(ips)
    for src, dst in ((nses[0], ips[1]), (nses[1], ips[0])):
        ping = subprocess.run(["ip", "netns", "exec", src, "busybox", "ping", "-c1", "-W2", dst],
                              check=False, capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr

    for i, (ns, result) in enumerate(zip(nses, results)):
        net.delete(net.conflist, f"cnitest-{i}", ns)
        net.delete(net.loopback, f"cnitest-{i}", ns, ifname="lo")
        assert host_veth(result) not in host_links()
        assert "eth0" not in ns_links(ns)
        assert "UP" not in ns_links(ns)["lo"]["flags"]
    assert net.leases() == set()
    assert os.listdir(net.cache) == []
    # DEL is idempotent
    for i, ns in enumerate(nses):
        net.delete(net.conflist, f"cnitest-{i}", ns)
    assert net.bridge in host_links()  # the bridge plugin leaves its bridge


@needs_root
@pytest.mark.root
def test_delete_after_the_netns_is_gone_releases_the_lease(net, make_netns):
    ns = make_netns()
    result = net.add(net.conflist, "cnitest-gone", ns)
    assert net.leases() == {cni.addresses(result)[0].split("/")[0]}
    subprocess.run(["ip", "netns", "delete", ns], check=True)
    net.delete(net.conflist, "cnitest-gone", ns)
    assert net.leases() == set()
    wait_until(lambda: host_veth(result) not in host_links())
    assert host_veth(result) not in host_links()
    assert os.listdir(net.cache) == []


@needs_root
@pytest.mark.root
def test_an_unknown_plugin_type_leaves_nothing(net, make_netns):
    ns = make_netns()
    before = ours(host_links())
    conflist = dict(net.conflist, plugins=net.conflist["plugins"] + [{"type": "mr-nosuch"}])
    with pytest.raises(NotFound) as err:
        net.add(conflist, "cnitest-unknown", ns)
    assert str(err.value) == (f"cni network {net.name}: plugin mr-nosuch not found in "
                              f"{REAL_PLUGIN_DIR}")
    assert ours(host_links()) == before
    assert set(ns_links(ns)) == {"lo"}
    assert net.leases() == set()
    assert not os.path.exists(net.cache) or os.listdir(net.cache) == []


@needs_root
@pytest.mark.root
def test_a_failing_chained_plugin_undoes_the_bridge(net, make_netns):
    ns = make_netns()
    before = ours(host_links())
    # tuning rejects the config before it touches anything
    conflist = dict(net.conflist, plugins=net.conflist["plugins"] + [
        {"type": "tuning", "mtu": "not-a-number"}])
    with pytest.raises(MiniRunError) as err:
        net.add(conflist, "cnitest-fail", ns)
    msg = str(err.value)
    assert msg.startswith(f"cni network {net.name}: plugin tuning: failed to load netconf: ")
    assert msg.endswith("(code 999)")
    assert "undoing" not in msg
    # the bridge itself may stay (CNI semantics); the veth and the lease must not
    assert ours(host_links()) - {net.bridge} == before
    assert set(ns_links(ns)) == {"lo"}
    assert net.leases() == set()
    assert not os.path.exists(net.cache) or os.listdir(net.cache) == []
    # and the network works afterwards for the same container
    result = net.add(net.conflist, "cnitest-fail", ns)
    assert "eth0" in ns_links(ns)
    net.delete(net.conflist, "cnitest-fail", ns)
    assert host_veth(result) not in host_links()
