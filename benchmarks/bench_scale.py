"""Scale benchmark (issue 13): sharded cube-single datasets of 1M to 100M rows.

    python benchmarks/bench_scale.py --rows 1M,10M,100M --dir DIR

One source shard in the official format (np.savez_compressed, every key; 1000 episodes x 1001 rows)
is built by tiling a few episodes made with ``mac data generate`` (``--source random``: random
arrays of the same shapes, for the smoke test). Each size is a directory of hard links to that one
physical shard, under distinct names: the cache key (names, sizes, mtimes) still tells them apart,
and only the cache costs disk. For each size, each phase runs in a fresh subprocess:

* build:  ``load_offline_data`` on a cold cache (base arrays + the singletask labels);
* load:   ``load_offline_data`` on the built cache + ``ChunkSampler`` (as ``mac train``);
* sample: the same load, the cache's pages dropped (fsync + posix_fadvise DONTNEED; the resident
  fraction is checked with mincore), then ``--batches`` batches of 256 chunks (h = 10): pass 1 cold,
  pass 2 warm (the same seed again, so the same pages).

Peak RSS is VmHWM, which counts the file pages a process has mapped (page cache: shared, clean,
reclaimable), bounded while sampling by ``--mapped_budget_mb`` (ChunkSampler's default; 0: no bound);
"anon" is the process's own memory (RssAnon polled every 10 ms, and at phase end).
Each size's data is deleted after it is measured unless --keep.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ENV_NAME = "cube-single-play-singletask-task2-v0"
DATASET = "cube-single-play-v0"
EPISODE_ROWS = 1001
BATCH, CHUNK = 256, 10
CACHE_BYTES_PER_ROW = 28 * 4 + 5 * 4 + 1 + 2 * 4   # observations, actions, terminals, rewards + masks
RANDOM_SHAPES = {"observations": 28, "actions": 5, "qpos": 21, "qvel": 20}   # cube-single


def parse_rows(text: str) -> list[int]:
    mult = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}
    out = []
    for tok in text.split(","):
        tok = tok.strip().lower()
        out.append(int(float(tok[:-1]) * mult[tok[-1]]) if tok[-1] in mult else int(tok))
    return out


def fmt_rows(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 10 ** 6 else f"{n / 1e3:g}k"


# ------------------------------------------------------------------------------------ memory / pages

def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class AnonPeak:
    """Peak RssAnon (MB) of this process, polled by a thread every 10 ms."""

    def __init__(self):
        self.peak_kb = proc_status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.01):
            self.peak_kb = max(self.peak_kb, proc_status_kb("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, proc_status_kb("RssAnon"))
        return self.peak_kb / 1024


def cache_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / DATASET / ".mac_cache").rglob("*.npy"))


def drop_pages(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)   # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths) -> float:
    """Fraction of the files' pages in the page cache (mincore on a fresh mapping; faults nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for p in paths:
        m = np.memmap(p, np.uint8, mode="r")
        n = -(-len(m) // page)
        vec = (ctypes.c_ubyte * n)()
        if libc.mincore(ctypes.c_void_p(m.ctypes.data), len(m), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        resident += int((np.frombuffer(vec, np.uint8) & 1).sum())
        total += n
        del m
    return resident / max(total, 1)


# ------------------------------------------------------------------------------------ data

def make_source(out: Path, source: str, shard_episodes: int, src_episodes: int) -> tuple[Path, Path]:
    """(shard, val): one official-format shard of ``shard_episodes`` episodes of 1001 rows (tiled
    from ``src_episodes`` generated ones) and a validation file."""
    out.mkdir(parents=True, exist_ok=True)
    shard, val = out / "source-shard.npz", out / "source-val.npz"
    if shard.is_file() and val.is_file():
        return shard, val
    if source == "real":
        from mac.data.generate import generate_dataset
        gen = out / "generated"
        train_path, val_path = generate_dataset(DATASET, src_episodes, str(gen), workers=1, seed=0,
                                                progress=False)
        with np.load(train_path) as f:
            episodes = {k: f[k] for k in f.files}
        shutil.copyfile(val_path, val)
        shutil.rmtree(gen)
    else:
        rng = np.random.default_rng(0)
        n = src_episodes * EPISODE_ROWS
        episodes = {k: rng.uniform(-1, 1, (n, d)).astype(np.float32) for k, d in RANDOM_SHAPES.items()}
        episodes["terminals"] = np.zeros(n, bool)
        episodes["terminals"][EPISODE_ROWS - 1::EPISODE_ROWS] = True
        np.savez_compressed(val, **{k: v[:EPISODE_ROWS] for k, v in episodes.items()})
    reps = -(-shard_episodes // src_episodes)
    rows = shard_episodes * EPISODE_ROWS
    np.savez_compressed(shard, **{k: np.concatenate([v] * reps)[:rows] for k, v in episodes.items()})
    return shard, val


def make_size(root: Path, shard: Path, val: Path, n_shards: int) -> Path:
    d = root / f"shards-{n_shards}"
    sd = d / DATASET
    sd.mkdir(parents=True, exist_ok=True)
    for i in range(n_shards):
        link = sd / f"{DATASET}-{i:03d}.npz"
        if not link.exists():
            os.link(shard, link)
    if not (sd / f"{DATASET}-val.npz").exists():
        os.link(val, sd / f"{DATASET}-val.npz")
    return d


def disk_bytes(path: Path, exclude_inodes=()) -> int:
    """Allocated bytes under ``path``, each inode once (hard links), less ``exclude_inodes``."""
    seen, total = set(exclude_inodes), 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


# ------------------------------------------------------------------------------------ phases

def _load(data_dir: Path, env, budget_mb: float | None):
    from mac.data import ChunkSampler, Normalizer, load_offline_data, parse_env_name

    spec = parse_env_name(ENV_NAME)
    train, val = load_offline_data(spec, data_dir, env, progress=False)
    budget = {} if budget_mb is None else {"mapped_budget_mb": budget_mb or None}   # None: the default
    sampler = ChunkSampler(train, CHUNK, 0.99, obs_normalizer=Normalizer.fit(val.observations), seed=0,
                           **budget)
    return train, sampler


def _timed_pass(sampler, batches: int) -> tuple[float, float]:
    """(samples/s over the pass, samples/s of the median batch: robust to a busy machine's stalls)."""
    sampler.reseed(0)
    times = np.empty(batches)
    for i in range(batches):
        t = time.perf_counter()
        sampler.sample(BATCH)
        times[i] = time.perf_counter() - t
    return BATCH * batches / times.sum(), BATCH / np.median(times)


def run_phase(phase: str, data_dir: Path, batches: int, budget_mb: float | None) -> dict:
    import ogbench

    env = ogbench.make_env_and_datasets(ENV_NAME, env_only=True)
    base_hwm = proc_status_kb("VmHWM") / 1024     # the interpreter, numpy, mujoco and the env
    anon = AnonPeak()
    out = {"base_rss_mb": base_hwm}
    t = time.perf_counter()
    if phase == "build":
        assert not cache_files(data_dir), "the cache exists already"
        train, _ = _load(data_dir, env, budget_mb)
        out["build_s"] = time.perf_counter() - t
        out["rows"] = len(train)
    elif phase == "load":
        _load(data_dir, env, budget_mb)
        out["load_s"] = time.perf_counter() - t
    else:
        files = cache_files(data_dir)
        drop_pages(files)
        out["resident_after_drop"] = resident_fraction(files)
        _, sampler = _load(data_dir, env, budget_mb)
        out["cold_sps"], out["cold_median_sps"] = _timed_pass(sampler, batches)
        out["resident_after_cold"] = resident_fraction(files)
        out["warm_sps"], out["warm_median_sps"] = _timed_pass(sampler, batches)
        out["releases"] = sampler.mapped_pages.releases if sampler.mapped_pages else 0
    out["anon_peak_mb"] = anon.stop()
    out["rss_peak_mb"] = proc_status_kb("VmHWM") / 1024
    return out


def spawn_phase(phase: str, data_dir: Path, batches: int, budget_mb: float | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    budget = [] if budget_mb is None else ["--mapped_budget_mb", str(budget_mb)]
    res = subprocess.run([sys.executable, __file__, "--_phase", phase, "--_data", str(data_dir),
                          "--batches", str(batches), *budget], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"phase {phase} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1M,10M", help="comma-separated sizes, e.g. 1M,10M,100M")
    p.add_argument("--dir", help="scratch directory for the shards and caches")
    p.add_argument("--batches", type=int, default=10_000)
    p.add_argument("--source", choices=["real", "random"], default="real")
    p.add_argument("--shard_episodes", type=int, default=1000, help="episodes of 1001 rows per shard")
    p.add_argument("--src_episodes", type=int, default=4, help="generated episodes tiled into the shard")
    p.add_argument("--margin_gb", type=float, default=4.0, help="disk to leave free")
    p.add_argument("--keep", action="store_true", help="keep each size's data")
    p.add_argument("--mapped_budget_mb", type=float,
                   help="the sampler's bound on mapped cache pages (0: no bound; default: the sampler's)")
    p.add_argument("--_phase", help=argparse.SUPPRESS)
    p.add_argument("--_data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._phase:
        print(json.dumps(run_phase(args._phase, Path(args._data), args.batches, args.mapped_budget_mb)))
        return []
    if not args.dir:
        p.error("--dir is required")
    root = Path(args.dir).expanduser()
    shard, val = make_source(root, args.source, args.shard_episodes, args.src_episodes)
    shard_rows = args.shard_episodes * EPISODE_ROWS
    results = []
    for rows in parse_rows(args.rows):
        n_shards = max(1, round(rows / shard_rows))
        estimate = n_shards * shard_rows * CACHE_BYTES_PER_ROW
        free = shutil.disk_usage(root).free
        print(f"[{fmt_rows(rows)}] {n_shards} shard(s) x {shard_rows:,} rows: cache estimate "
              f"{estimate / 1e9:.2f} GB (+ the {shard.stat().st_size / 1e6:.0f} MB source shard, once); "
              f"free {free / 1e9:.1f} GB", flush=True)
        if estimate > free - args.margin_gb * 1e9:
            print(f"[{fmt_rows(rows)}] skipped: would leave less than {args.margin_gb} GB free", flush=True)
            continue
        d = make_size(root, shard, val, n_shards)
        try:
            r = {"rows": n_shards * shard_rows, "shards": n_shards}
            r["build"] = spawn_phase("build", d, args.batches, args.mapped_budget_mb)
            r["cache_gb"] = disk_bytes(d / DATASET / ".mac_cache") / 1e9
            r["disk_gb"] = disk_bytes(d) / 1e9      # the cache + the one physical shard + val
            r["load"] = spawn_phase("load", d, args.batches, args.mapped_budget_mb)
            r["sample"] = spawn_phase("sample", d, args.batches, args.mapped_budget_mb)
        finally:
            if not args.keep:
                shutil.rmtree(d)
        print(json.dumps(r), flush=True)
        results.append(r)
    print(table(results, args.batches))
    return results


def table(results: list[dict], batches: int) -> str:
    """The RESULTS.md table (resident fractions and per-phase base RSS are in the JSON lines)."""
    lines = ["| rows | shards | cache build (base + labels) | disk: cache + the 1 shard | peak RSS / anon: build "
             f"| load | sample {batches:,} x {BATCH} | samples/s cold: pass (median batch) "
             "| samples/s warm: pass (median batch) |", "|---|---|---|---|---|---|---|---|---|"]
    mb = lambda ph: f"{ph['rss_peak_mb']:,.0f} / {ph['anon_peak_mb']:,.0f} MB"  # noqa: E731
    for r in results:
        b, ld, s = r["build"], r["load"], r["sample"]
        lines.append(
            f"| {r['rows']:,} | {r['shards']} | {b['build_s']:.1f} s | {r['cache_gb']:.2f} + "
            f"{r['disk_gb'] - r['cache_gb']:.2f} GB | {mb(b)} | {mb(ld)} ({ld['load_s']:.2f} s) | {mb(s)} "
            f"| {s['cold_sps'] / 1e6:.2f} M ({s['cold_median_sps'] / 1e6:.2f} M) "
            f"| {s['warm_sps'] / 1e6:.2f} M ({s['warm_median_sps'] / 1e6:.2f} M) |")
    return "\n".join(lines)


def test_scale_smoke(tmp_path):
    """One tiny round (CI): 2 shards of 2 random episodes, every phase."""
    (r,) = main(["--rows", "4k", "--dir", str(tmp_path), "--source", "random", "--shard_episodes", "2",
                 "--src_episodes", "1", "--batches", "5", "--margin_gb", "0"])
    assert r["build"]["rows"] == 2 * 2 * EPISODE_ROWS and r["sample"]["warm_sps"] > 0
    assert not (tmp_path / "shards-2").exists()


if __name__ == "__main__":
    main()
