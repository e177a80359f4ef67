"""runc's --log/--log-format and `list --format json`, as podman's conmon and containerd's
shim read them: the log file exists after every invocation, errors and warnings go there
in logrus's text or JSON lines as well as to stderr; list prints runc's compact JSON."""

import json
import os
import re
import shutil
import subprocess

import pytest
from ocitest import base_config, needs_root, oci, rootfs  # noqa: F401

pytestmark = [needs_root, pytest.mark.root]

RUNC = shutil.which("runc")
needs_runc = pytest.mark.skipif(RUNC is None, reason="runc is not on PATH")

TEXT_LINE = re.compile(r'time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" level=(\w+) msg=(.*)')


def _text_entries(path) -> list[tuple[str, str]]:
    entries = []
    for line in path.read_text().splitlines():
        m = TEXT_LINE.fullmatch(line)
        assert m, line
        entries.append((m.group(1), m.group(2)))
    return entries


def test_log_file_is_created_on_a_quiet_invocation(oci, tmp_path):
    log = tmp_path / "sub" / "log.json"
    log.parent.mkdir()
    proc = oci("--log", log, "--log-format", "json", "list")
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == ""
    assert os.stat(log).st_mode & 0o777 == 0o644  # as runc, whatever our umask says


def test_log_file_that_cannot_be_opened_is_an_error(oci, tmp_path):
    proc = oci("--log", tmp_path / "missing-dir" / "log", "list")
    assert proc.returncode == 1
    assert proc.stderr.startswith("minirun-oci: --log "), proc.stderr
    assert "No such file or directory" in proc.stderr


def test_errors_are_appended_in_logrus_text(oci, tmp_path):
    log = tmp_path / "log"
    log.write_text('time="2020-01-01T00:00:00Z" level=info msg=before\n')
    proc = oci("--log", log, "state", "no-such")
    assert proc.returncode == 1
    assert proc.stderr == "minirun-oci: container 'no-such' does not exist\n"
    assert _text_entries(log) == [
        ("info", "before"),
        ("error", '"container \'no-such\' does not exist"'),
    ]


def test_quotes_in_text_messages_are_escaped_as_go_does(oci, tmp_path):
    log = tmp_path / "log"
    oci("--log", log, "state", 'a"b')
    (entry,) = _text_entries(log)
    assert entry[0] == "error"
    assert '\\"' in entry[1] and entry[1].startswith('"') and entry[1].endswith('"')


def test_json_lines_carry_level_msg_time(oci, rootfs, tmp_path):
    log = tmp_path / "log.json"
    cfg = base_config(["true"])
    cfg["ociVersion"] = "1.9.0"  # a warning
    cid = oci.new_id()
    bundle = oci.bundle(cfg, rootfs)
    assert oci("--log", log, "--log-format", "json", "run", "--bundle", bundle, cid,
               check=True).stderr.count("warning") == 1
    oci("--log", log, "--log-format", "json", "state", "no-such")
    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [list(e) for e in entries] == [["level", "msg", "time"]] * 2
    assert [e["level"] for e in entries] == ["warning", "error"]
    assert "ociVersion 1.9.0 is newer" in entries[0]["msg"]
    assert entries[1]["msg"] == "container 'no-such' does not exist"
    assert all(" " not in line.replace(e["msg"], "") for line, e in zip(lines, entries))


@needs_runc
@pytest.mark.runc
def test_text_and_json_lines_have_runcs_shape(oci, tmp_path):
    for fmt in ("text", "json"):
        ours, theirs = tmp_path / f"ours.{fmt}", tmp_path / f"theirs.{fmt}"
        oci("--log", ours, "--log-format", fmt, "state", "no-such")
        subprocess.run([RUNC, "--root", str(tmp_path / "runc"), "--log", str(theirs),
                        "--log-format", fmt, "state", "no-such"], capture_output=True,
                       timeout=30, check=False)

        def shape(path):
            line = path.read_text()
            return re.sub(r'"[^"]*does not exist"', "MSG", re.sub(r"\d", "0", line))

        assert shape(ours) == shape(theirs)


def test_list_json_empty_is_null_as_runc(oci):
    assert oci("list", "--format", "json").stdout == "null\n"


@needs_runc
@pytest.mark.runc
def test_list_json_empty_matches_runc(oci, tmp_path):
    theirs = subprocess.run([RUNC, "--root", str(tmp_path / "runc-empty"), "list", "-f", "json"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert oci("list", "-f", "json").stdout == theirs.stdout


@needs_runc
@pytest.mark.runc
def test_list_json_is_runcs_compact_line(oci, rootfs, tmp_path):
    cfg = base_config(["sleep", "100"])
    cfg["annotations"] = {"org.example": "x"}
    bundle = oci.bundle(cfg, rootfs)
    cid = oci.new_id()
    oci("create", "--bundle", bundle, cid, check=True)
    out = oci("list", "-f", "json").stdout
    assert out.count("\n") == 1 and ", " not in out and '": ' not in out
    (ours,) = json.loads(out)
    runc_root = str(tmp_path / "runc")
    rid = f"r{cid}"
    try:
        # no pipes: the created container keeps its stdio open
        subprocess.run([RUNC, "--root", runc_root, "create", "--bundle", bundle, rid],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        (theirs,) = json.loads(subprocess.run([RUNC, "--root", runc_root, "list", "-f", "json"],
                                              capture_output=True, text=True,
                                              timeout=30, check=False).stdout)
    finally:
        subprocess.run([RUNC, "--root", runc_root, "delete", "--force", rid],
                       capture_output=True, timeout=60, check=False)
    assert list(ours) == list(theirs)
    for key in ("status", "bundle", "rootfs", "annotations", "owner"):
        assert ours[key] == theirs[key], key
    assert ours["id"] == cid and ours["pid"] > 0
