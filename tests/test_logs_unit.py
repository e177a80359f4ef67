"""Reading CRI-format logs back: partial lines joined, a tty's lone \\r kept as data."""

import os
from types import SimpleNamespace

from minirun.logs import follow_log


def write_log(root, cid: str, text: str) -> None:
    d = os.path.join(root, "containers", cid)
    os.makedirs(d)
    with open(os.path.join(d, "ctr.log"), "w", newline="") as f:
        f.write(text)


def test_a_lone_carriage_return_stays_inside_its_line(tmp_path):
    write_log(str(tmp_path), "c1",
              "2026-11-25T21:00:00.000000001Z stdout F / # \recho hi\r\n"
              "2026-11-25T21:00:00.000000002Z stdout P par\r"
              "tial \n"
              "2026-11-25T21:00:00.000000003Z stdout F end\n")
    logs = SimpleNamespace(
        log_path=lambda cid: os.path.join(str(tmp_path), "containers", cid, "ctr.log"))
    entries = list(follow_log(logs, "c1"))
    assert [text for _, _, text in entries] == ["/ # \recho hi\r\n", "par\rtial end\n"]
