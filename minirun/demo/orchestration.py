"""Orchestration [orquestación de contenedores]."""

from __future__ import annotations

import time

NAME = "orchestration"
TITLE = "one host restarts a container; moving, scaling and healing across nodes is not its job"
EXPLAIN = """
What one host's runtime does: run containers and, with `--restart always`, start one
again when it exits, on this host. What it cannot do: restart it on another node when
this host dies, run five copies across three machines and keep five, roll out a new
image, give a set of copies one address (deployment, scaling, management, cluster
state [despliegue, escalado, manejo, gestión del cluster]). That is an orchestrator's
job: in Kubernetes the control plane (kube-apiserver, etcd, the scheduler, the
controllers) decides which node runs which pod, and on each node the kubelet asks the
container runtime through the CRI, a gRPC socket: `minirun cri` serves it, so a kubelet
can use minirun as the node's runtime, and minirun keeps doing only the one-host part.

Live part: a container that exits with status 3 every second under `--restart always`;
the daemon starts it again and counts (RestartCount in inspect).
"""

WATCH_SECONDS = 5


def run(lab) -> None:
    lab.say("A container that fails every second, with --restart always:")
    name = lab.start("--restart", "always", "busybox", "sh", "-c", "sleep 1; exit 3",
                     name="crashy")
    time.sleep(WATCH_SECONDS)
    proc = lab.minirun("inspect", "-f", "{{.RestartCount}} {{.State.Status}}", name)
    count, _, status = proc.stdout.strip().partition(" ")
    lab.observe("restart_count", int(count) if count.isdigit() else -1)
    lab.observe("status", status)
    lab.expect(count.isdigit() and int(count) >= 2,
               "the daemon restarts it again and again on this host",
               f"{count} restarts in {WATCH_SECONDS} s")
    lab.say("If this host goes down, so does the container, and nothing here starts it "
            "elsewhere: a kubelet talking to `minirun cri` lets Kubernetes do that.")
