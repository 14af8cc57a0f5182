"""Finding and reading OGBench dataset files, with errors that name the file and the problem.

Layouts:
- one file: ``<dataset_dir>/<name>.npz`` + ``<dataset_dir>/<name>-val.npz`` (the official layout);
- shards: a directory of many ``*.npz`` files (e.g. 100 x 1M transitions) plus a ``*-val.npz``.
Shard sets are converted once, one shard at a time, to a cache of raw ``.npy`` files that are
memory-mapped (``<shard dir>/.mac_cache``; labels per env under ``labels/<env id>``), so a
100M-transition dataset is labelled and sampled without holding it in RAM.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("observations", "actions", "terminals")
INFO_KEYS = ("qpos", "qvel", "button_states")
LABEL_KEYS = ("qpos", "button_states")  # what ogbench's labels read (none reads qvel)
CACHE_DIRNAME = ".mac_cache"
CACHE_VERSION = 2  # 2: labels cached per env (1 kept qpos, qvel, button_states)


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class DatasetFiles:
    train: tuple[Path, ...]  # one file, or the shards in order
    val: Path
    sharded: bool = False    # a shard layout (memory-mapped cache), even of one shard


def generate_hint(dataset_name: str, dataset_dir: str | os.PathLike) -> str:
    return (f"create it locally with: mac data generate --env_name {dataset_name} "
            f"--num_episodes 1000 --save_dir {dataset_dir}")


def find_dataset_files(dataset_name: str, dataset_dir: str | os.PathLike) -> DatasetFiles:
    """The train file(s) and validation file of ``dataset_name`` under ``dataset_dir``."""
    d = Path(dataset_dir).expanduser()
    single, single_val = d / f"{dataset_name}.npz", d / f"{dataset_name}-val.npz"
    looked = [str(single), str(single_val)]
    if single.is_file() and single_val.is_file():
        return DatasetFiles((single,), single_val)
    # Shard layouts: <dir>/<name>/ or <dir> itself holding *.npz shards and one *-val.npz.
    for shard_dir in (d / dataset_name, d):
        if not shard_dir.is_dir():
            continue
        shards = sorted(p for p in shard_dir.glob("*.npz") if not p.name.endswith("-val.npz"))
        vals = sorted(shard_dir.glob("*-val.npz"))
        looked.append(f"{shard_dir}/*.npz (shards) + *-val.npz")
        if shards and vals and shard_dir != d:
            return DatasetFiles(tuple(shards), vals[0], sharded=True)
        if len(shards) > 1 and vals and shard_dir == d and not single.exists():
            return DatasetFiles(tuple(shards), vals[0], sharded=True)
    missing = "\n  ".join(looked)
    raise DatasetError(f"dataset {dataset_name!r} not found; looked for:\n  {missing}\n"
                       f"{generate_hint(dataset_name, d)}")


def _open_npz(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); "
                           "the file is truncated or corrupt, regenerate or re-download it") from exc


def read_npz(path: str | os.PathLike, keys_wanted=REQUIRED_KEYS + INFO_KEYS) -> dict[str, np.ndarray]:
    """Read and validate one OGBench-format file. Returns the wanted keys that are present
    (the required ones always); float arrays as float32, terminals as bool."""
    path = Path(path)
    f = _open_npz(path)
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f.files]
        if missing:
            raise DatasetError(f"{path}: missing key(s) {missing}; found {sorted(f.files)}. "
                               "An OGBench dataset needs observations, actions and terminals")
        out = {}
        for k in keys_wanted:
            if k not in f.files:
                continue
            try:
                out[k] = f[k]
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, zipfile.LargeZipFile) as exc:
                raise DatasetError(f"{path}: cannot read array {k!r} ({type(exc).__name__}: {exc}); "
                                   "the file is truncated or corrupt") from exc
    validate_arrays(out, str(path))
    return out


def validate_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Checks dtypes, shapes, lengths and finiteness in place (casts floats to float32)."""
    n = None
    for k, a in arrays.items():
        if k == "terminals":
            if a.ndim != 1:
                raise DatasetError(f"{where}: 'terminals' must be 1-D, got shape {a.shape}")
            if not (a.dtype == bool or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
                raise DatasetError(f"{where}: 'terminals' has dtype {a.dtype}, expected bool")
            if not np.isin(a, (0, 1)).all():
                raise DatasetError(f"{where}: 'terminals' must hold only 0/1")
            arrays[k] = a.astype(bool, copy=False)
        elif k == "button_states":
            if not np.issubdtype(a.dtype, np.integer) or a.ndim != 2:
                raise DatasetError(f"{where}: 'button_states' must be a 2-D integer array, "
                                   f"got {a.dtype} {a.shape}")
        else:
            if not np.issubdtype(a.dtype, np.floating):
                raise DatasetError(f"{where}: {k!r} has dtype {a.dtype}, expected float32")
            if a.ndim != 2:
                raise DatasetError(f"{where}: {k!r} must be 2-D (rows, dim), got shape {a.shape}")
            a = a.astype(np.float32, copy=False)
            if not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0]
                raise DatasetError(f"{where}: {k!r} contains NaN/inf (first at row {bad[0]}, column {bad[1]})")
            arrays[k] = a
        if n is None:
            n = len(arrays[k])
        elif len(arrays[k]) != n:
            lens = {kk: len(v) for kk, v in arrays.items()}
            raise DatasetError(f"{where}: arrays have mismatched lengths {lens}")
    if n == 0:
        raise DatasetError(f"{where}: the dataset is empty")
    if not arrays["terminals"][-1]:
        raise DatasetError(f"{where}: the last row is not terminal; the file is truncated "
                           "(every episode must end with terminals=1)")


# ------------------------------------------------------------------------------------ shard cache

def _cache_dir(shards: tuple[Path, ...]) -> Path:
    return shards[0].parent / CACHE_DIRNAME


def _cache_manifest(shards: tuple[Path, ...]) -> dict:
    return {"version": CACHE_VERSION,
            "shards": [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in shards]}


def _shard_rows(path: Path) -> int:
    """Rows of one ``.npz`` file, from the header of its ``terminals`` member (nothing else is read)."""
    try:
        with zipfile.ZipFile(path) as z, z.open("terminals.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape = read_header(f)[0]
    except KeyError:
        raise DatasetError(f"{path}: missing key(s) ['terminals']. An OGBench dataset needs observations, "
                           "actions and terminals") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); "
                           "the file is truncated or corrupt, regenerate or re-download it") from exc
    if len(shape) != 1:
        raise DatasetError(f"{path}: 'terminals' must be 1-D, got shape {shape}")
    return int(shape[0])


def _reclaim_stale_temps(cache: Path) -> None:
    """Delete the temp files of builders that died (a live builder's pid is in its temp names)."""
    for tmp in cache.glob("*.npy.*.tmp"):
        try:
            os.kill(int(tmp.name.split(".")[-2]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not our naming / another user's live process
            pass


def _open_cached(path: Path) -> np.ndarray:
    """A read-only memmap of a cache file, mapped with huge pages where the kernel can (Linux with a
    large-folio page cache, e.g. ext4 on 6.x): random rows of a 100M-row cache otherwise cost a page
    walk each (bench_scale: 10M rows, +17% samples/s warm)."""
    a = np.load(path, mmap_mode="r")
    if hasattr(mmap, "MADV_HUGEPAGE") and getattr(a, "_mmap", None) is not None:
        with contextlib.suppress(OSError):
            a._mmap.madvise(mmap.MADV_HUGEPAGE)
    return a


MAPPED_BUDGET_MB = 1024   # default of MappedPages' budget (mac train --mapped_budget_mb)


_statm: tuple[int, int] | None = None   # (pid, fd): kept open (2 us a read, not 11); /proc/self is per pid


def _file_rss() -> int:
    """This process's resident file-backed and shared-memory pages (RssFile + RssShmem), in bytes."""
    global _statm
    if _statm is None or _statm[0] != os.getpid():
        _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
    return int(os.pread(_statm[1], 256, 0).split()[2]) * mmap.PAGESIZE


class MappedPages:
    """Bounds the pages of read-only memory-mapped arrays (the shard cache) that stay mapped in this
    process, and so its RSS.

    A page that a gather touches stays mapped until the mapping is closed: random rows of a 14 GB
    cache end up mapping all of it, and RSS (VmHWM) reaches 14 GB although the pages are clean page
    cache. Call :meth:`check` after each batch (it reads /proc/self/statm, 2 us): when one more batch,
    growing the process's file-backed RSS as much as the last one, would take it past
    ``budget_bytes``, the mappings' pages are dropped with madvise(MADV_DONTNEED). The data stays in
    the file and the page cache; the next access maps it again (a minor fault), so values never
    change. A batch's own pages are not split: one that maps more than the budget (a fault maps a
    whole page-cache folio, up to 2 MB) is released after it.
    """

    def __init__(self, maps: list[mmap.mmap], budget_bytes: int):
        self.maps = maps
        self.budget = int(budget_bytes)
        self.releases = 0
        self._batch = 0    # the growth of the last batch (a one-off, e.g. a library paged in, passes)
        self.release()     # loading mapped pages too (every terminal row, at least)

    @classmethod
    def of(cls, arrays, budget_bytes: int | None) -> "MappedPages | None":
        """For the read-only memmaps among ``arrays``; None where there is nothing to bound: no budget,
        arrays in RAM, maps that fit in the budget whole, or no Linux procfs."""
        maps = {id(m): m for m in (getattr(a, "_mmap", None) for a in arrays
                                   if isinstance(a, np.memmap) and a.mode == "r") if m is not None}
        if budget_bytes is None or sum(len(m) for m in maps.values()) <= budget_bytes \
                or not hasattr(mmap, "MADV_DONTNEED") or not os.path.exists("/proc/self/statm"):
            return None
        return cls(list(maps.values()), budget_bytes)

    def check(self) -> None:
        used = _file_rss() - self._base     # other files' pages too: errs on the safe side
        self._batch, self._used = used - self._used, used
        if used + self._batch > self.budget:
            self.release()

    def release(self) -> None:
        for m in self.maps:
            m.madvise(mmap.MADV_DONTNEED)   # read-only MAP_SHARED: drops the mapping, not the data
        self.releases += 1
        self._base, self._used = _file_rss(), 0


def cached_columns(shards: tuple[Path, ...], subdir: str, keys_wanted, compute, key: dict | None = None,
                   progress: bool = True, desc: str = "caching shards") -> dict[str, np.ndarray]:
    """Columns computed shard by shard and concatenated into memory-mapped ``.npy`` files under
    ``<shards' dir>/.mac_cache/<subdir>``.

    ``compute(arrays, where)`` maps one shard's validated ``keys_wanted`` arrays (rows n_i) to
    ``{name: (n_i, ...) array}``. One shard is in RAM at a time and the outputs are appended with
    plain writes, so memory stays bounded by the largest shard whatever the total. The cache is
    reused while the shards' names, sizes and mtimes and ``key`` are unchanged; it is published
    atomically (data fsynced, the manifest written last), so an interrupted build is never used.
    Returns ``{name: (N, ...) read-only memmap}``, N = the shards' total rows.
    """
    from tqdm import tqdm

    from mac.console import show_progress
    cache = _cache_dir(shards) / subdir
    manifest_path = cache / "manifest.json"
    manifest = {"source": _cache_manifest(shards), "key": key or {}}
    if manifest_path.is_file():
        try:
            saved = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            saved = None
        if saved and {k: saved.get(k) for k in manifest} == manifest:
            try:
                return {k: _open_cached(cache / f"{k}.npy") for k in saved["keys"]}
            except (OSError, ValueError):   # a cache file deleted or damaged by hand: rebuild
                pass
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    _reclaim_stale_temps(cache)
    lengths = [_shard_rows(p) for p in shards]
    total = sum(lengths)
    outs: dict[str, tuple] = {}   # name -> (temp path, open file, row shape, dtype)
    try:
        for p, n in tqdm(list(zip(shards, lengths)), desc=desc, disable=not show_progress(progress)):
            cols = compute(read_npz(p, keys_wanted), str(p))
            if not outs:   # the first shard fixes each column's row shape and dtype
                for k, v in cols.items():
                    tmp = cache / f"{k}.npy.{os.getpid()}.tmp"
                    f = open(tmp, "wb")
                    outs[k] = (tmp, f, v.shape[1:], v.dtype)
                    np.lib.format.write_array_header_1_0(f, {
                        "descr": np.lib.format.dtype_to_descr(v.dtype), "fortran_order": False,
                        "shape": (total, *v.shape[1:])})
            if set(cols) != set(outs):
                raise DatasetError(f"{p}: keys {sorted(cols)} differ from earlier shards' {sorted(outs)}")
            for k, v in cols.items():
                _, f, shape, dtype = outs[k]
                if (v.shape[1:], v.dtype) != (shape, dtype):
                    raise DatasetError(f"{p}: {k!r} has shape/dtype {v.shape[1:]}/{v.dtype}, but earlier "
                                       f"shards have {shape}/{dtype}")
                if len(v) != n:
                    raise DatasetError(f"{p}: {k!r} has {len(v)} rows but the file's terminals have {n}")
                np.ascontiguousarray(v).tofile(f)
            del cols
        for k, (tmp, f, _, _) in outs.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, cache / f"{k}.npy")
    except BaseException:
        for tmp, f, _, _ in outs.values():
            f.close()
            tmp.unlink(missing_ok=True)
        raise
    tmp = manifest_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(manifest, keys=sorted(outs))))
    os.replace(tmp, manifest_path)
    for old in cache.glob("*.npy"):   # columns of an older layout (e.g. version 1 kept qpos, qvel)
        if old.stem not in outs:
            old.unlink(missing_ok=True)
    return {k: _open_cached(cache / f"{k}.npy") for k in sorted(outs)}


def load_shards(shards: tuple[Path, ...], keys_wanted=REQUIRED_KEYS,
                progress: bool = True) -> dict[str, np.ndarray]:
    """The shards' ``keys_wanted`` concatenated into memory-mapped arrays (see :func:`cached_columns`);
    labels are cached separately (mac.data.dataset), so qpos and the like need no copy here."""
    return cached_columns(shards, "", keys_wanted, lambda arrays, where: arrays,
                          key={"keys": sorted(keys_wanted)}, progress=progress)


def load_train_arrays(files: DatasetFiles, progress: bool = True) -> dict[str, np.ndarray]:
    """One file: the arrays used in RAM. Shards: observations, actions, terminals memory-mapped."""
    if not files.sharded:
        return read_npz(files.train[0], REQUIRED_KEYS + LABEL_KEYS)
    return load_shards(files.train, progress=progress)
