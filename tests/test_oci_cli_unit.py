"""The minirun-oci argument parser: runc's flag styles, usage errors."""

import pytest

from minirun.oci_cli import UsageError, main, parse_args


def test_global_and_verb_flags():
    a = parse_args(["--root", "/r", "--log=/l", "--log-format", "json", "create", "--bundle",
                    "/b", "--pid-file=/p", "--console-socket", "/s", "--preserve-fds", "2",
                    "--no-pivot", "ctr1"])
    assert (a.root, a.log, a.log_format, a.verb) == ("/r", "/l", "json", "create")
    assert (a.bundle, a.pid_file, a.console_socket, a.preserve_fds, a.no_pivot, a.id) == \
        ("/b", "/p", "/s", 2, True, "ctr1")
    assert a.no_new_keyring is False


def test_single_dash_long_flags_and_short_aliases():
    a = parse_args(["-root", "/r", "run", "-bundle", "/b", "-d", "x"])
    assert (a.root, a.bundle, a.detach, a.id) == ("/r", "/b", True, "x")
    a = parse_args(["delete", "-f", "x"])
    assert a.force and a.id == "x"


def test_kill_signal_optional_and_flags_after_id():
    assert parse_args(["kill", "x"]).signal == "SIGTERM"
    a = parse_args(["kill", "x", "KILL", "--all"])
    assert (a.id, a.signal, a.all) == ("x", "KILL", True)


def test_spec_rootless_is_the_verb_flag():
    a = parse_args(["spec", "--rootless", "--bundle", "/b"])
    assert a.rootless_spec is True and a.bundle == "/b"


@pytest.mark.parametrize("argv", [["create"], ["create", "a", "b"], ["nope"],
                                  ["create", "--bogus", "x"], ["list", "--format", "yaml"],
                                  ["create", "--preserve-fds", "many", "x"],
                                  ["create", "x", "--bundle"]])
def test_usage_errors(argv):
    with pytest.raises(UsageError):
        parse_args(argv)


def test_main_usage_error_exit_code(capsys):
    assert main(["create"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minirun-oci: create: expects <id>")
