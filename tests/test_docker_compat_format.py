"""Docker's habits that scripts rely on (issue 12): usage errors, run's exit statuses,
`--pull`, Go templates and filters for ps/images/inspect/network/info, docker's inspect
document and the prune prompts.

Each case runs the command line through minirun and, where podman is installed here,
through podman too (runc, cgroupfs, file events, `--network none`, private storage, the
same busybox rootfs imported as an image), and compares exit statuses and the shape of
the output. Where podman differs from docker, minirun follows docker and the case says
so (podman 4.3 exits 125 for `inspect` of a missing name, where docker exits 1; it does
not report OOMKilled under runc with cgroupfs).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from clients import (
    build_rootfs_tarball,
    has_cap_sys_resource,
    remove_cgroup_tree,
    remove_tree,
    run_token,
)
from enginetest import engine  # noqa: F401
from ocitest import REPO, needs_root

pytestmark = [needs_root, pytest.mark.root]

PODMAN_IMAGE = "localhost/busybox"
USAGE = re.compile(r"^minirun: (.+)\nSee '(minirun[a-z ]*) --help'\.\n$")


class Podman:
    """podman 4.3 on private storage with runc; its cgroups under /minirun/."""

    def __init__(self, base: str) -> None:
        self.base = base
        conf = os.path.join(base, "containers.conf")
        with open(conf, "w") as f:
            f.write('[containers]\nlog_driver = "k8s-file"\n[engine]\n'
                    'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    'lock_type = "file"\n')
        storage_conf = os.path.join(base, "storage.conf")
        with open(storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/storage"\n'
                    f'runroot = "{base}/run"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage_conf)
        self.cmd = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run",
                    "--storage-driver", "vfs", "--tmpdir", f"{base}/tmp",
                    "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                    "--runtime", "runc"]
        self.cgroup_parent = f"/minirun/podman-compat-{run_token()}"
        self.run_opts = ["--network", "none", "--cgroup-parent", self.cgroup_parent]
        if not has_cap_sys_resource():  # podman asks for rlimits above this host's hard ones
            self.run_opts += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

    def __call__(self, *args: str, input: str | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        args = list(args)
        if args[:1] == ["run"] and "--bogus" not in args and len(args) > 1:
            args[1:1] = self.run_opts
        return subprocess.run(self.cmd + args, capture_output=True, text=True, env=self.env,
                              timeout=timeout, input=input if input is not None else "",
                              check=False)


@pytest.fixture(scope="module")
def podman():
    """podman, or None where it (or runc) is not installed: the minirun half of each case
    still runs and asserts."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        yield None
        return
    base = tempfile.mkdtemp(prefix="minirun-compat-")
    pm = Podman(base)
    try:
        proc = pm("import", build_rootfs_tarball(base), PODMAN_IMAGE)
        assert proc.returncode == 0, proc.stderr
        yield pm
    finally:
        pm("rm", "--all", "--force", "--time", "0")
        pm("rmi", "--all", "--force")
        left = remove_cgroup_tree(pm.cgroup_parent)
        remove_tree(base)
        assert not left, f"podman cgroups left: {left}"


@pytest.fixture(autouse=True)
def podman_clean(podman):
    """No podman container outlives its test."""
    yield
    if podman is not None:
        podman("rm", "--all", "--force", "--time", "0")


@pytest.fixture
def mr(engine):  # noqa: F811
    """minirun; every container the test made is removed after it."""
    before = set(engine("ps", "-a", "-q", "--no-trunc").stdout.split())
    yield engine
    for cid in set(engine("ps", "-a", "-q", "--no-trunc").stdout.split()) - before:
        engine("rm", "-f", cid)


def both(mr, podman, *args: str, input: str | None = None):
    """The command line through minirun (image `busybox`) and podman (its image), or
    (minirun's, None) without podman."""
    mine = mr(*args, input=input if input is not None else "")
    theirs = None
    if podman is not None:
        theirs = podman(*[PODMAN_IMAGE if a == "busybox" else a for a in args], input=input)
    return mine, theirs


def lines(proc) -> list[str]:
    return proc.stdout.splitlines()


# --- usage errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, first_line, verb", [
    (["run", "--bogus", "busybox"], "unknown flag: --bogus", "minirun run"),
    (["run", "-Z", "busybox"], "unknown shorthand flag: 'Z' in -Z", "minirun run"),
    (["ps", "--bogus"], "unknown flag: --bogus", "minirun ps"),
    (["run"], '"minirun run" requires at least 1 argument', "minirun run"),
    (["stop", "-t", "soon", "x"], 'invalid argument for "-t, --time" flag', "minirun stop"),
    (["bogus"], "'bogus' is not a minirun command", "minirun"),
    (["ps", "--format"], "flag needs an argument: --format", None),
])
def test_usage_errors_are_one_line_and_125(mr, podman, args, first_line, verb):
    mine, theirs = both(mr, podman, *args)
    assert mine.returncode == 125, mine.stderr
    m = USAGE.match(mine.stderr)
    assert m, mine.stderr
    assert m.group(1).startswith(first_line), mine.stderr
    if verb:
        assert m.group(2) == verb
    assert mine.stdout == ""
    if theirs is not None:
        assert theirs.returncode == 125, theirs.stderr


def test_a_bare_group_prints_its_help_as_docker(mr):
    proc = mr("network")
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: minirun network ")
    assert "ls" in proc.stdout and proc.stderr == ""


# --- run: exit statuses and --pull ----------------------------------------------------------

@pytest.mark.parametrize("command, status", [("/no/such/program", 127), ("/etc/passwd", 126)])
def test_run_detached_program_failures_have_dockers_statuses(mr, podman, command, status):
    mine, theirs = both(mr, podman, "run", "-d", "busybox", command)
    assert mine.returncode == status, mine.stderr
    assert len(mine.stderr.strip().splitlines()) == 1 and command in mine.stderr
    if theirs is not None:
        assert theirs.returncode == status, theirs.stderr


def test_pull_never_with_a_missing_image_is_125(mr, podman):
    mine, theirs = both(mr, podman, "run", "--rm", "--pull", "never", "nosuch:1", "true")
    assert mine.returncode == 125
    assert mine.stderr == "minirun: error: no such image: nosuch:1\n"
    if theirs is not None:
        assert theirs.returncode == 125


def test_a_bad_pull_policy_is_refused(mr):
    proc = mr("run", "--rm", "--pull", "sometimes", "busybox", "true")
    assert proc.returncode == 125
    assert proc.stderr == ('minirun: error: invalid pull option: \'sometimes\': must be one '
                           'of "always", "missing" or "never"\n')


@pytest.fixture(scope="module")
def registry_image(tmp_path_factory):
    """busybox pushed to a registry on 127.0.0.1 as <host>/bb:1."""
    from registry import MEDIA_LAYER, serve_one_image

    top = str(tmp_path_factory.mktemp("pullreg"))

    def busybox(layout):
        with open(build_rootfs_tarball(top), "rb") as f:
            blob = gzip.compress(f.read(), compresslevel=1)
        return layout.image([], layer_blobs=[(blob, MEDIA_LAYER["gzip"])],
                            arch={"x86_64": "amd64", "aarch64": "arm64"}.get(
                                os.uname().machine, os.uname().machine))

    yield from serve_one_image(top, "bb:1", busybox)


def test_run_pulls_a_missing_image_with_dockers_lines(mr, podman, registry_image):
    mr("rmi", "-f", registry_image)
    proc = mr("run", "--rm", registry_image, "echo", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
    err = proc.stderr.splitlines()
    assert err[0] == f"Unable to find image '{registry_image}' locally"
    assert err[1] == "1: Pulling from bb"
    assert re.fullmatch(r"[0-9a-f]{12}: Pulling fs layer", err[2]), err
    assert re.fullmatch(r"[0-9a-f]{12}: Pull complete", err[3]), err
    assert re.fullmatch(r"Digest: sha256:[0-9a-f]{64}", err[4]), err
    assert err[5:] == [f"Status: Downloaded newer image for {registry_image}"]
    # present now: no pull, nothing on stderr
    proc = mr("run", "--rm", registry_image, "echo", "again")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "again\n", "")
    # always: it asks the registry, which has nothing newer
    proc = mr("run", "--rm", "--pull", "always", registry_image, "true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"Status: Image is up to date for {registry_image}"
    if podman is not None:
        theirs = podman("run", "--rm", "--tls-verify=false", registry_image, "echo", "hi")
        assert (theirs.returncode, theirs.stdout) == (0, "hi\n"), theirs.stderr


def test_the_fast_client_pulls_a_missing_image_too(mr, registry_image):
    mr("rmi", "-f", registry_image)
    proc = subprocess.run([sys.executable, "-m", "minirun.client", "run", "--rm",
                           registry_image, "echo", "fast"], env=mr.env, capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False)
    assert (proc.returncode, proc.stdout) == (0, "fast\n"), proc.stderr
    assert proc.stderr.startswith(f"Unable to find image '{registry_image}' locally\n")
    mr("rmi", "-f", registry_image)
    proc = subprocess.run([sys.executable, "-m", "minirun.client", "run", "--rm", "--pull",
                           "never", registry_image, "true"], env=mr.env, capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 125 and "no such image" in proc.stderr


# --- ps -------------------------------------------------------------------------------------

def test_ps_template_state_and_status(mr, podman):
    mine, theirs = both(mr, podman, "run", "--name", "fmt-exited", "busybox", "sh", "-c",
                        "exit 3")
    assert mine.returncode == 3
    both(mr, podman, "run", "-d", "--name", "fmt-up", "busybox", "sleep", "60")
    mine, theirs = both(mr, podman, "ps", "-a", "--filter", "name=fmt-",
                        "--format", "{{.Names}}|{{.Status}}|{{.State}}")
    for proc in (mine, theirs):
        if proc is None:
            continue
        assert proc.returncode == 0, proc.stderr
        rows = sorted(line.split("|") for line in lines(proc))
        assert [r[0] for r in rows] == ["fmt-exited", "fmt-up"]
        assert re.fullmatch(r"Exited \(3\) (Less than a second|\d+ seconds?) ago", rows[0][1])
        # podman 4.3 says "Up 2 seconds ago" where docker says "Up 2 seconds"
        assert re.fullmatch(r"Up (Less than a second|\d+ seconds?)( ago)?", rows[1][1])
    # docker's State is the word; podman 4.3's is its Status text
    assert [line.split("|")[2] for line in sorted(lines(mine))] == ["exited", "running"]
    # without -a: running ones only
    assert lines(mr("ps", "--format", "{{.Names}}")) == ["fmt-up"]


def test_ps_table_header_and_columns(mr, podman):
    both(mr, podman, "run", "--name", "fmt-table", "busybox", "true")
    for proc in both(mr, podman, "ps", "-a", "--format", "table {{.ID}}\\t{{.Names}}"):
        if proc is None:
            continue
        out = lines(proc)
        assert re.fullmatch(r"CONTAINER ID +NAMES", out[0]), out
        assert re.fullmatch(r"[0-9a-f]{12} +fmt-table", out[1]), out
    default = lines(mr("ps", "-a"))
    assert default[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                  "PORTS", "NAMES"]
    assert '"true"' in default[1] and "Exited (0)" in default[1]


def test_ps_json_is_one_docker_object_per_line(mr):
    mr("run", "--name", "fmt-json1", "busybox", "true")
    mr("run", "--name", "fmt-json2", "busybox", "true")
    out = [json.loads(line) for line in lines(mr("ps", "-a", "--format", "json"))]
    assert {o["Names"] for o in out} >= {"fmt-json1", "fmt-json2"}
    assert set(out[0]) == {"Command", "CreatedAt", "ID", "Image", "Labels", "LocalVolumes",
                           "Mounts", "Names", "Networks", "Ports", "RunningFor", "Size",
                           "State", "Status"}
    same = [json.loads(line) for line in lines(mr("ps", "-a", "--format", "{{json .}}"))]
    moving = ("RunningFor", "Status")  # times, which may tick between the two commands
    assert [{k: v for k, v in o.items() if k not in moving} for o in same] == \
        [{k: v for k, v in o.items() if k not in moving} for o in out]


def test_ps_filters_trunc_last_and_quiet(mr):
    mr("run", "--name", "flt-a", "busybox", "sh", "-c", "exit 1")
    mr("run", "--name", "flt-b", "busybox", "sh", "-c", "exit 2")
    mr("run", "-d", "--name", "flt-c", "busybox", "sleep", "60")

    def names(*args):
        proc = mr("ps", "-a", "--format", "{{.Names}}", *args)
        assert proc.returncode == 0, proc.stderr
        return sorted(lines(proc))

    assert names("--filter", "name=flt-") == ["flt-a", "flt-b", "flt-c"]
    assert names("--filter", "status=exited", "--filter", "name=flt-") == ["flt-a", "flt-b"]
    assert names("--filter", "exited=2") == ["flt-b"]
    # one key's values OR, different keys AND
    assert names("-f", "exited=1", "-f", "exited=2") == ["flt-a", "flt-b"]
    assert names("-f", "exited=1", "-f", "name=flt-b") == []
    assert names("-f", "ancestor=busybox", "-f", "name=flt-") == ["flt-a", "flt-b", "flt-c"]
    assert names("-f", "ancestor=busybox:latest", "-f", "name=flt-c") == ["flt-c"]
    assert names("-f", "ancestor=alpine") == []
    assert names("-f", "since=flt-a", "-f", "name=flt-") == ["flt-b", "flt-c"]
    assert names("-f", "before=flt-c", "-f", "name=flt-") == ["flt-a", "flt-b"]
    assert names("-f", "label=nope") == []
    assert names("-f", "publish=80", "-f", "name=flt-") == []
    from registry import free_port

    port = free_port()
    proc = mr("run", "-d", "--name", "flt-p", "-p", f"127.0.0.1:{port}:80", "busybox",
              "sleep", "60")
    assert proc.returncode == 0, proc.stderr
    assert names("-f", "publish=80") == ["flt-p"] == names("-f", "expose=80/tcp")
    ports = mr("ps", "-f", "name=flt-p", "--format", "{{.Ports}}").stdout
    assert ports == f"127.0.0.1:{port}->80/tcp\n"
    mr("rm", "-f", "flt-p")
    full = mr("inspect", "-f", "{{.Id}}", "flt-c").stdout.strip()
    assert names("-f", f"id={full[:10]}") == ["flt-c"]
    assert lines(mr("ps", "-n", "1", "--format", "{{.Names}}")) == ["flt-c"]
    assert lines(mr("ps", "-l", "-q", "--no-trunc")) == [full]
    assert lines(mr("ps", "-q", "-f", "name=flt-c")) == [full[:12]]
    notrunc = mr("ps", "--no-trunc", "-f", "name=flt-c", "--format", "{{.ID}} {{.Command}}")
    assert notrunc.stdout == f'{full} "sleep 60"\n'
    mr("run", "--name", "flt-size", "busybox", "sh", "-c", "head -c 5000 /dev/zero > /f")
    size = mr("ps", "-a", "-s", "-f", "name=flt-size", "--format", "{{.Size}}").stdout
    assert re.fullmatch(r"5kB \(virtual \d[\d.]*[kMG]B\)\n", size), size
    bad = mr("ps", "-f", "status=sleepy")
    assert bad.returncode == 1 and bad.stderr == \
        "minirun: error: invalid filter 'status=sleepy'\n"
    bad = mr("ps", "-f", "colour=red")
    assert bad.returncode == 1 and bad.stderr == "minirun: error: invalid filter 'colour'\n"


def test_ps_status_never_shows_an_unknown_exit(mr):
    """A record whose exit status was lost shows docker's 255, with a time."""
    import sqlite3

    mr("run", "--name", "lost", "busybox", "true")
    db = sqlite3.connect(os.path.join(mr.root, "engine.db"))
    with db:
        db.execute("UPDATE containers SET exit_code = -1, finished = NULL WHERE name = 'lost'")
    db.close()
    status = mr("ps", "-a", "-f", "name=lost", "--format", "{{.Status}}").stdout.strip()
    assert re.fullmatch(r"Exited \(255\) (Less than a second|\d+ \w+) ago", status), status


@pytest.mark.parametrize("template, rest", [
    ("{{.Names", "template parsing error: template: :1: unclosed action"),
    ("{{nosuchfunc .Names}}", 'template parsing error: template: :1: function "nosuchfunc"'),
])
def test_template_errors_are_one_line_and_125(mr, podman, template, rest):
    mine, theirs = both(mr, podman, "ps", "-a", "--format", template)
    assert mine.returncode == 125
    assert mine.stderr.startswith(f"minirun: error: {rest}") and \
        mine.stderr.count("\n") == 1, mine.stderr
    if theirs is not None:
        assert theirs.returncode == 125, theirs.stderr


# --- inspect --------------------------------------------------------------------------------

def test_inspect_is_docker_shaped(mr):
    mr("run", "-d", "--name", "insp", "-m", "32m", "--cpus", "0.5", "--pids-limit", "99",
       "--restart", "on-failure:3", "--cap-add", "NET_ADMIN", "--read-only", "-e", "X=1",
       "--network", "none", "busybox", "sleep", "60")
    doc = json.loads(mr("inspect", "insp").stdout)[0]
    assert re.fullmatch(r"[0-9a-f]{64}", doc["Id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", doc["Created"])
    assert (doc["Path"], doc["Args"], doc["Name"]) == ("sleep", ["60"], "/insp")
    state = doc["State"]
    assert state["Status"] == "running" and state["Running"] is True
    assert state["Paused"] is state["Restarting"] is state["OOMKilled"] is state["Dead"] \
        is False
    assert state["Pid"] > 0 and state["ExitCode"] == 0 and state["Error"] == ""
    assert state["FinishedAt"] == "0001-01-01T00:00:00Z" and state["StartedAt"] != \
        state["FinishedAt"]
    hc = doc["HostConfig"]
    assert (hc["Memory"], hc["MemorySwap"], hc["NanoCpus"], hc["PidsLimit"]) == \
        (32 * 1024 * 1024, 64 * 1024 * 1024, 500000000, 99)
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert (hc["NetworkMode"], hc["CapAdd"], hc["ReadonlyRootfs"], hc["Privileged"]) == \
        ("none", ["NET_ADMIN"], True, False)
    config = doc["Config"]
    assert config["Image"] == "busybox" and config["Cmd"] == ["sleep", "60"]
    assert "X=1" in config["Env"] and config["Entrypoint"] is None
    assert doc["Driver"] == "overlay2" and doc["Platform"] == "linux"
    assert doc["GraphDriver"]["Name"] == "overlay2" and doc["Mounts"] == []
    assert "Networks" in doc["NetworkSettings"]
    assert doc["Minirun"]["Options"]["memory"] == "32m"
    out = mr("inspect", "-f", "{{.State.Status}} {{.HostConfig.Memory}} {{json .Config.Cmd}}",
             "insp")
    assert out.stdout == 'running 33554432 ["sleep","60"]\n'
    mr("stop", "-t", "0", "insp")
    state = json.loads(mr("inspect", "insp").stdout)[0]["State"]
    assert state["Running"] is False and state["Pid"] == 0 and state["ExitCode"] == 137
    assert state["FinishedAt"] != "0001-01-01T00:00:00Z"


def test_inspect_compares_with_podman(mr, podman):
    both(mr, podman, "run", "--name", "insp-p", "-m", "32m", "busybox", "sh", "-c", "exit 4")
    template = "{{.State.Status}} {{.State.ExitCode}} {{.State.Running}} " \
               "{{.HostConfig.Memory}} {{.Config.Cmd}}"
    for proc in both(mr, podman, "inspect", "-f", template, "insp-p"):
        if proc is not None:
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == "exited 4 false 33554432 [sh -c exit 4]\n"


def test_oom_killed_shows_in_inspect(mr):
    proc = mr("run", "--name", "oom", "-m", "32m", "busybox", "sh", "-c",
              'a=$(head -c 100000000 /dev/zero | tr "\\000" x); echo survived')
    with open("/proc/cgroups") as f:
        has_memory = any(line.split()[:1] == ["memory"] for line in f)
    if not has_memory:
        pytest.fail("this host has no memory cgroup controller")
    assert proc.returncode == 137 and "survived" not in proc.stdout, proc.stderr
    assert mr("inspect", "-f", "{{.State.OOMKilled}}", "oom").stdout == "true\n"


def test_inspect_falls_back_to_images_networks_and_takes_type(mr, podman):
    mr("run", "--name", "insp-t", "busybox", "true")
    image = json.loads(mr("inspect", "busybox").stdout)[0]
    assert image["Id"].startswith("sha256:") and image["RepoTags"] == ["busybox:latest"]
    assert image["RootFS"]["Type"] == "layers" and image["Os"] == "linux"
    assert mr("inspect", "-f", "{{.Name}}", "bridge").stdout == "bridge\n"
    assert mr("inspect", "--type", "image", "-f", "{{.Os}}", "busybox").stdout == "linux\n"
    proc = mr("inspect", "--type", "image", "insp-t")
    assert proc.returncode == 1 and proc.stderr == "Error: No such image: insp-t\n"
    # several names: a JSON array of those found; each missing one named; exit 1 (docker)
    proc = mr("inspect", "insp-t", "nosuch", "busybox")
    assert proc.returncode == 1 and proc.stderr == "Error: No such object: nosuch\n"
    docs = json.loads(proc.stdout)
    assert [d["Name"] if "Name" in d else d["RepoTags"] for d in docs] == \
        ["/insp-t", ["busybox:latest"]]
    # a named volume made by -v NAME:/dst, and the container's Mounts entry for it
    mr("run", "--name", "insp-v", "-v", "compatvol:/data", "busybox", "true")
    vol = json.loads(mr("inspect", "--type", "volume", "compatvol").stdout)[0]
    assert (vol["Name"], vol["Driver"]) == ("compatvol", "local")
    assert vol["Mountpoint"] == os.path.join(mr.root, "volumes", "compatvol", "_data")
    mounts = json.loads(mr("inspect", "-f", "{{json .Mounts}}", "insp-v").stdout)
    assert mounts == [{"Type": "volume", "Name": "compatvol", "Source": vol["Mountpoint"],
                       "Destination": "/data", "Driver": "local", "Mode": "z", "RW": True,
                       "Propagation": ""}]
    mine, theirs = both(mr, podman, "inspect", "-f", "{{.Id}}", "nosuch")
    assert mine.returncode == 1
    if theirs is not None:
        assert theirs.returncode == 125  # podman's status; docker's is 1, as minirun's


# --- images, networks, info -----------------------------------------------------------------

def test_images_templates_and_filters(mr, podman):
    mine, theirs = both(mr, podman, "images", "--format", "{{.Repository}}:{{.Tag}}")
    assert "busybox:latest" in lines(mine)
    if theirs is not None:
        assert f"{PODMAN_IMAGE}:latest" in lines(theirs)
    assert "busybox" in mr("images", "-f", "reference=busy*", "--format",
                           "{{.Repository}}").stdout.split()
    assert mr("images", "-f", "reference=nothing*", "-q").stdout == ""
    assert mr("images", "-f", "dangling=true", "-q").stdout == ""
    assert mr("images", "-f", "dangling=false", "-q").stdout != ""
    header = lines(mr("images", "--digests"))[0].split()
    assert header == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    obj = json.loads(lines(mr("images", "--format", "json", "busybox"))[0])
    assert obj["Repository"] == "busybox" and obj["Tag"] == "latest"
    full = mr("images", "--no-trunc", "-q", "busybox").stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", full)


def test_network_and_info_templates(mr):
    assert mr("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout.splitlines()[0] \
        == "bridge bridge"
    out = mr("network", "inspect", "-f", "{{.Name}} {{.Driver}}", "bridge").stdout
    assert out == "bridge bridge\n"
    info = mr("info", "--format", "{{.OSType}} {{.KernelVersion}} {{.Driver}}")
    assert info.stdout == f"linux {os.uname().release} overlay2\n"
    assert json.loads(mr("info", "-f", "{{json .}}").stdout)["ServerVersion"]


# --- prune ----------------------------------------------------------------------------------

PROMPT = "Are you sure you want to continue? [y/N] "


@pytest.mark.parametrize("answer", ["", "n\n", "yes please\n"])
def test_container_prune_asks_and_keeps_on_anything_but_y(mr, podman, answer):
    both(mr, podman, "run", "--name", "prune-me", "busybox", "true")
    mine, theirs = both(mr, podman, "container", "prune", input=answer)
    assert mine.stdout.startswith("WARNING! This will remove all stopped containers.\n"
                                  + PROMPT), mine.stdout
    assert mine.returncode == 0 and "Deleted" not in mine.stdout
    assert "prune-me" in mr("ps", "-a", "--format", "{{.Names}}").stdout
    if theirs is not None and answer != "yes please\n":  # podman takes any y... as yes
        assert PROMPT in theirs.stdout
        assert "prune-me" in podman("ps", "-a", "--format", "{{.Names}}").stdout


@pytest.mark.parametrize("args, answer", [([], "y\n"), (["-f"], None)])
def test_container_prune_removes_on_y_or_force(mr, podman, args, answer):
    mr("run", "--name", "prune-y", "busybox", "true")
    mr("run", "-d", "--name", "prune-keep", "busybox", "sleep", "60")
    full = mr("inspect", "-f", "{{.Id}}", "prune-y").stdout.strip()
    proc = mr("container", "prune", *args, input=answer)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split(PROMPT)[-1]
    assert re.fullmatch(rf"Deleted Containers:\n(?:[0-9a-f]{{64}}\n)*{full}\n"
                        rf"(?:[0-9a-f]{{64}}\n)*\nTotal reclaimed space: \S+\n", out), out
    assert lines(mr("ps", "-a", "--format", "{{.Names}}")) == ["prune-keep"]
    if podman is not None:
        podman("run", "--name", "prune-y", PODMAN_IMAGE, "true")
        theirs = podman("container", "prune", *args, input=answer)
        assert theirs.returncode == 0, theirs.stderr
        assert "prune-y" not in podman("ps", "-a", "--format", "{{.Names}}").stdout


def test_system_prune(mr, rootfs_import):
    mr("run", "--name", "sys-prune", "busybox", "true")
    proc = mr("system", "prune", input="")
    assert proc.stdout.startswith("WARNING! This will remove:\n  - all stopped containers\n"
                                  "  - all networks not used by at least one container\n"
                                  "  - all dangling images\n"), proc.stdout
    assert proc.stdout.endswith(PROMPT + "\n") and proc.returncode == 0
    assert "sys-prune" in mr("ps", "-a", "--format", "{{.Names}}").stdout
    dangling = rootfs_import()
    proc = mr("system", "prune", "-f")
    assert proc.returncode == 0, proc.stderr
    assert "Deleted Containers:\n" in proc.stdout and f"deleted: {dangling}" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("Total reclaimed space: ")
    assert "sys-prune" not in mr("ps", "-a", "--format", "{{.Names}}").stdout
    assert "busybox" in mr("images", "--format", "{{.Repository}}").stdout  # in use: kept


def test_network_and_image_prune_ask(mr):
    network_what = "all custom networks not used by at least one container"
    for args, what in ((["network", "prune"], network_what),
                       (["image", "prune"], "all dangling images")):
        proc = mr(*args, input="")
        assert proc.stdout == f"WARNING! This will remove {what}.\n{PROMPT}\n", proc.stdout
        assert proc.returncode == 0


@pytest.fixture
def rootfs_import(mr, tmp_path):
    """Import a one-file rootfs without a name (a dangling image): its id."""
    def make() -> str:
        import tarfile

        tar = str(tmp_path / "tiny.tar")
        with tarfile.open(tar, "w") as t:
            info = tarfile.TarInfo("hello")
            info.size = 0
            t.addfile(info)
        proc = mr("import", tar)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()
    return make
