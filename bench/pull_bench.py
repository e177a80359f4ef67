#!/usr/bin/env python3
"""Pulling and unpacking a ~100 MB multi-layer image: `minirun pull` against
`skopeo copy` + `umoci unpack`, from a local registry.

    bench/pull_bench.py [--iterations 5] [--warmup 1] [--size-mb 100] [--layers 5]
                        [--minirun CMD] [--json FILE|-]

Run as root. It builds an OCI image layout in a temp dir: N gzip layers of files filled
with random bytes (gzip cannot shrink them, so what goes over the wire is about what is
unpacked). It starts Debian's docker-registry on 127.0.0.1 (a free port, storage in the
temp dir) and pushes the image with skopeo. Then, per iteration, into fresh temp dirs:

  (a) `minirun pull 127.0.0.1:PORT/bench:latest`: fetches the blobs, checks their
      digests and unpacks every layer into the store (the pull is not lazy: the layers
      are on disk when it returns, which the bench checks);
  (b) `skopeo copy docker://127.0.0.1:PORT/bench:latest oci:DIR:latest`, then
      `umoci unpack --image DIR:latest BUNDLE` (one flattened rootfs).

The two take turns, the order rotating per iteration. Dirty pages are written back with
sync(2) before each timed command, and the sync right after it is timed too: "+ sync" is
the time until the data is on disk. The registry is stopped by pid and the temp dir
removed at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # benchlib, when run by another path

from benchlib import (
    BenchError,
    add_iteration_args,
    add_output_args,
    catch_signals,
    checked,
    checkout_state,
    describe_checkout,
    free_port,
    ignore_signals,
    loadavg,
    log_stream,
    machine_and_checkout,
    minirun_command,
    ratio,
    remove_tree,
    rotated,
    stats_header,
    stats_row,
    summary,
    timed,
    write_json,
)

REGISTRY_BIN = "/usr/bin/docker-registry"
REPO_TAG = "bench:latest"
TIMEOUT = 600.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


# --- the image ----------------------------------------------------------------------------

class OCILayout:
    """An OCI image layout written blob by blob."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.blobs = os.path.join(path, "blobs", "sha256")
        os.makedirs(self.blobs)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def put(self, data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    def put_layer(self, files: list[tuple[str, int]], rng: random.Random) -> tuple[dict, str]:
        """A gzip layer of these (path, size) files of random bytes; (descriptor, diff_id)."""
        tar_path = os.path.join(self.path, "layer.tar")
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            dirs = set()
            for name, size in files:
                parent = os.path.dirname(name)
                while parent and parent not in dirs:
                    dirs.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                    tar.addfile(info)
                    parent = os.path.dirname(parent)
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = size, 0o644, 1700000000
                tar.addfile(info, _RandomReader(rng, size))
        diff = hashlib.sha256()
        gz_path = os.path.join(self.path, "layer.tar.gz")
        # mtime=0: the same bytes for the same content, as image builders do.
        with open(tar_path, "rb") as src, open(gz_path, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            while chunk := src.read(1 << 20):
                diff.update(chunk)
                gz.write(chunk)
        os.unlink(tar_path)
        blob = hashlib.sha256()
        size = 0
        with open(gz_path, "rb") as f:
            while chunk := f.read(1 << 20):
                blob.update(chunk)
                size += len(chunk)
        os.rename(gz_path, os.path.join(self.blobs, blob.hexdigest()))
        return ({"mediaType": OCI_LAYER_GZIP, "digest": f"sha256:{blob.hexdigest()}",
                 "size": size}, f"sha256:{diff.hexdigest()}")

    def finish(self, layers: list[dict], diff_ids: list[str], tag: str) -> None:
        config = {"created": "2024-01-01T00:00:00Z", "architecture": _go_arch(), "os": "linux",
                  "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "history": [{"created_by": f"pull_bench layer {i}"}
                              for i in range(len(layers))]}
        cfg = dict(self.put(json.dumps(config, sort_keys=True).encode()), mediaType=OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg,
                    "layers": layers}
        desc = dict(self.put(json.dumps(manifest, sort_keys=True).encode()),
                    mediaType=OCI_MANIFEST,
                    annotations={"org.opencontainers.image.ref.name": tag})
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [desc]}, f)


class _RandomReader:
    """`size` random bytes, read by tarfile in chunks (random.randbytes: fast, not secret)."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self.rng = rng
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def _go_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine)


def build_image(path: str, total_mb: int, n_layers: int, seed: int) -> dict:
    """The layout at `path`; files of 4 KiB to 4 MiB, ~total_mb MiB over n_layers layers."""
    rng = random.Random(seed)
    layout = OCILayout(path)
    per_layer = total_mb * (1 << 20) // n_layers
    descs, diff_ids, n_files = [], [], 0
    for i in range(n_layers):
        files, left = [], per_layer
        while left > 0:
            size = min(left, int(4096 * 2 ** rng.uniform(0, 10)))
            files.append((f"data/layer{i}/d{len(files) % 16:02d}/f{len(files):05d}", size))
            left -= size
        desc, diff_id = layout.put_layer(files, rng)
        descs.append(desc)
        diff_ids.append(diff_id)
        n_files += len(files)
    layout.finish(descs, diff_ids, "latest")
    return {"layers": n_layers, "files": n_files,
            "compressed_bytes": sum(d["size"] for d in descs),
            "uncompressed_bytes": per_layer * n_layers}


# --- the registry -------------------------------------------------------------------------

def start_registry(tmp: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    storage = os.path.join(tmp, "registry-storage")
    os.mkdir(storage)
    cfg = os.path.join(tmp, "registry.yml")
    with open(cfg, "w") as f:
        f.write("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {storage}\nhttp:\n  addr: 127.0.0.1:{port}\n"
                "  secret: minirun-bench-secret\n")
    with open(os.path.join(tmp, "registry.log"), "ab") as log:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", cfg], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(os.path.join(tmp, "registry.log")) as f:
                raise BenchError(f"docker-registry exited {proc.returncode}: {f.read()[-1000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise BenchError("docker-registry did not listen within 15s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- measuring ----------------------------------------------------------------------------

def layer_dirs(root: str) -> int:
    layers = os.path.join(root, "layers")
    return sum(os.path.isfile(os.path.join(layers, d, "meta.json"))
               for d in os.listdir(layers)) if os.path.isdir(layers) else 0


def run_minirun(cmd: list[str], ref: str, work: str, n_layers: int) -> dict:
    root = os.path.join(work, "minirun-root")
    env = dict(os.environ, MINIRUN_ROOT=root)
    os.sync()
    result = timed(cmd + ["pull", "-q", ref], env, TIMEOUT)
    if result["code"] != 0:
        raise BenchError(f"minirun pull exited {result['code']}: {result['stderr']}")
    synced = timed_sync()
    unpacked = layer_dirs(root)
    if unpacked != n_layers:
        raise BenchError(f"minirun pull returned with {unpacked} of {n_layers} layers unpacked")
    return {"minirun pull": result["elapsed"],
            "minirun pull + sync": result["elapsed"] + synced}


def run_skopeo_umoci(ref: str, work: str) -> dict:
    layout = os.path.join(work, "oci")
    bundle = os.path.join(work, "bundle")
    os.sync()
    copy = timed(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                  f"docker://{ref}", f"oci:{layout}:latest"], None, TIMEOUT)
    if copy["code"] != 0:
        raise BenchError(f"skopeo copy exited {copy['code']}: {copy['stderr']}")
    copy_sync = timed_sync()
    unpack = timed(["umoci", "unpack", "--image", f"{layout}:latest", bundle], None, TIMEOUT)
    if unpack["code"] != 0:
        raise BenchError(f"umoci unpack exited {unpack['code']}: {unpack['stderr']}")
    unpack_sync = timed_sync()
    return {"skopeo copy": copy["elapsed"], "umoci unpack": unpack["elapsed"],
            "skopeo + umoci": copy["elapsed"] + unpack["elapsed"],
            "skopeo + umoci + sync": copy["elapsed"] + copy_sync + unpack["elapsed"]
            + unpack_sync}


ROWS = ("minirun pull", "skopeo copy", "umoci unpack", "skopeo + umoci",
        "minirun pull + sync", "skopeo + umoci + sync")
RATIOS = {"minirun pull / (skopeo + umoci)": ("minirun pull", "skopeo + umoci"),
          "minirun pull / skopeo copy": ("minirun pull", "skopeo copy"),
          "with sync: minirun / (skopeo + umoci)": ("minirun pull + sync",
                                                   "skopeo + umoci + sync")}


MINIRUN_HOW = {"--minirun": "--minirun", "launcher": "scripts/install.sh's launcher",
               "console": "pip's console script"}
STATS = ("median", "p90", "min", "max")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_iteration_args(p, iterations=5, warmup=1)
    p.add_argument("--size-mb", type=int, default=100, help="uncompressed size (MiB)")
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--seed", type=int, default=4, help="seed of the image's random bytes")
    p.add_argument("--minirun", help="the minirun command (default: scripts/install.sh's "
                   "launcher for this checkout, else .venv/bin/minirun)")
    add_output_args(p, tmpdir_help="parent of the temp dir (default $TMPDIR); the pulls "
                    "write there")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.layers < 1 or args.size_mb < 1:
        p.error("--iterations, --layers and --size-mb must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("pull_bench: run as root", file=sys.stderr)
        return 2
    log = log_stream(args.json)
    catch_signals()
    tmp = tempfile.mkdtemp(prefix="minirun-pullbench.", dir=args.tmpdir)
    registry = None
    try:
        for tool, package in (("skopeo", "skopeo"), ("umoci", "umoci"),
                              (REGISTRY_BIN, "docker-registry")):
            if not shutil.which(tool):
                raise BenchError(f"no {tool}: apt-get install {package}")
        minirun_cmd, source = minirun_command(args.minirun)
        print(f"minirun: {' '.join(minirun_cmd)} ({MINIRUN_HOW[source]})", file=log)
        t0 = time.perf_counter()
        image = build_image(os.path.join(tmp, "layout"), args.size_mb, args.layers, args.seed)
        print(f"image: {image['layers']} gzip layers, {image['files']} files, "
              f"{image['uncompressed_bytes'] / 2**20:.0f} MiB unpacked, "
              f"{image['compressed_bytes'] / 2**20:.0f} MiB compressed "
              f"(built in {time.perf_counter() - t0:.1f}s)", file=log)
        registry, host = start_registry(tmp)
        ref = f"{host}/{REPO_TAG}"
        checked(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                 f"oci:{os.path.join(tmp, 'layout')}:latest", f"docker://{ref}"], None, TIMEOUT)
        remove_tree(os.path.join(tmp, "layout"))
        print(f"pushed to docker-registry at {ref}", file=log)

        state = checkout_state()
        load_before = loadavg()
        print(describe_checkout(state, load_before), file=log)
        samples: dict[str, list[float]] = {row: [] for row in ROWS}
        tools = {"minirun": lambda work: run_minirun(minirun_cmd, ref, work, args.layers),
                 "skopeo+umoci": lambda work: run_skopeo_umoci(ref, work)}
        names = list(tools)
        total = args.warmup + args.iterations
        print(f"{args.warmup} warm-up + {args.iterations} iterations, alternating "
              f"{' and '.join(names)}", file=log)
        for i in range(total):
            for name in rotated(names, i):
                work = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp)
                try:
                    result = tools[name](work)
                finally:
                    remove_tree(work)
                if i >= args.warmup:
                    for key, value in result.items():
                        samples[key].append(value)
                print(f"  {i + 1}/{total} {name}: "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in result.items()), file=log)

        stats = {row: summary(v) for row, v in samples.items() if v}
        ratios = {label: ratio(stats[a], stats[b]) for label, (a, b) in RATIOS.items()}
        result = {"times": stats, "ratios": ratios, "samples": samples, "image": image,
                  "config": {"iterations": args.iterations, "warmup": args.warmup,
                             "minirun": minirun_cmd,
                             **machine_and_checkout(state, load_before)}}
        if args.json != "-":
            print("\n" + stats_header("time (s)", 28, STATS))
            for row, s in stats.items():
                print(stats_row(row, s, 28, STATS))
            print()
            for label, r in ratios.items():
                print(f"{label:<40} median {r['median']:.2f}, p90 {r['p90']:.2f}")
            print(f"(above 1: minirun is slower); load average at the end "
                  f"{result['config']['loadavg_after']}")
        write_json(result, args.json)
        return 0
    except (BenchError, subprocess.CalledProcessError, OSError) as e:
        print(f"pull_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npull_bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        ignore_signals()
        stop(registry)
        for problem in remove_tree(tmp):
            print(f"pull_bench: cleanup: {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
