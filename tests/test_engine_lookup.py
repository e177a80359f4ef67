"""Naming a container or a network: its full id, its name, or a unique prefix of its id
made of hex digits, compared as strings (never as SQL LIKE patterns, where `_` and `%`
match anything: `minirun rm -f d7_` once removed the container d71063... named `like`)."""

import json
import sqlite3

import pytest
from enginetest import engine  # noqa: F401
from ocitest import needs_root

from minirun.errors import InvalidArgument, NotFound
from minirun.lookup import find_record


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def like(engine):  # noqa: F811
    """An exited container named `like`; removed after the test whatever happens."""
    proc = engine("run", "--name", "like", "--network", "none", "busybox", "true")
    assert proc.returncode == 0, proc.stderr
    yield json.loads(engine("inspect", "like", check=True).stdout)[0]["Id"]
    engine("rm", "-f", "like")


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("pattern", ["{p2}_", "{p2}%", "{p3}%", "%", "___", "_%", "like_",
                                     "lik%", "{p3}_{rest}"])
def test_a_pattern_character_never_matches_a_container(engine, like, pattern):  # noqa: F811
    typed = pattern.format(p2=like[:2], p3=like[:3], rest=like[4:])
    proc = engine("rm", "-f", typed)
    assert proc.returncode == 1
    assert one_line_error(proc) == f"minirun: error: no such container: {typed}"
    proc = engine("inspect", typed)
    assert proc.returncode == 1 and f"Error: No such object: {typed}" in proc.stderr
    # still there: the pattern removed nothing
    assert json.loads(engine("inspect", "like", check=True).stdout)[0]["Id"] == like


@needs_root
@pytest.mark.root
def test_full_id_name_and_hex_prefix_find_the_container(engine, like):  # noqa: F811
    for typed in (like, "like", like[:3], like[:12]):
        out = engine("inspect", typed, check=True).stdout
        assert json.loads(out)[0]["Id"] == like, typed
    assert engine("inspect", like[:2]).returncode == 1  # too short to be taken as a prefix
    assert engine("rm", like[:6], check=True).stdout.strip() == like[:6]
    assert engine("inspect", "like").returncode == 1


@needs_root
@pytest.mark.root
def test_network_names_and_ids_are_matched_exactly(engine):  # noqa: F811
    """A network is a record until a container joins it: nothing on the host here."""
    nid = engine("network", "create", "n_1", check=True).stdout.strip()
    try:
        engine("network", "create", "nx1", check=True)
        assert json.loads(engine("network", "inspect", "n_1", check=True).stdout)[0][
            "Id"] == nid
        for typed in (f"{nid[:3]}_", f"{nid[:3]}%", "n%", "n_"):
            proc = engine("network", "inspect", typed)
            assert proc.returncode == 1 and f"no such network: {typed}" in proc.stderr, typed
            proc = engine("network", "rm", typed)
            assert proc.returncode == 1 and f"no such network: {typed}" in proc.stderr, typed
        assert "n_1" in engine("network", "ls", "-q").stdout.split()
        assert engine("network", "rm", nid[:8], check=True).stdout.strip() == "n_1"
    finally:
        engine("network", "rm", "n_1")
        engine("network", "rm", "nx1")


def _table(ids_and_names: list[tuple[str, str]]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE things (id TEXT PRIMARY KEY, name TEXT UNIQUE)")
    db.executemany("INSERT INTO things VALUES (?, ?)", ids_and_names)
    return db


def test_an_ambiguous_prefix_is_an_error_naming_it():
    db = _table([("d71063aa", "like"), ("d71999bb", "other"), ("e0e0e0e0", "d7106")])
    with pytest.raises(InvalidArgument) as err:
        find_record(db, "things", "container", "d71")
    assert str(err.value) == "container id prefix d71 is ambiguous: it matches 2 containers"
    assert find_record(db, "things", "container", "d7106")["name"] == "d7106"  # name first
    assert find_record(db, "things", "container", "d7199")["name"] == "other"
    with pytest.raises(NotFound):
        find_record(db, "things", "container", "d7_")


def test_the_full_id_wins_over_a_name():
    db = _table([("abc123", "x"), ("def456", "abc123")])
    assert find_record(db, "things", "network", "abc123")["name"] == "x"
    assert find_record(db, "things", "network", "x")["id"] == "abc123"
