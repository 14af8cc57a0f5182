"""Finding and reading OGBench dataset files, with errors that name the file and the problem.

Layouts:
- one file: ``<dataset_dir>/<name>.npz`` + ``<dataset_dir>/<name>-val.npz`` (the official layout);
- shards: a directory of many ``*.npz`` files (e.g. 100 x 1M transitions) plus a ``*-val.npz``.
Large shard sets are converted once to a cache of raw ``.npy`` files that are memory-mapped, so a
100M-transition dataset is sampled uniformly without holding it in RAM.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("observations", "actions", "terminals")
INFO_KEYS = ("qpos", "qvel", "button_states")
CACHE_DIRNAME = ".mac_cache"
CACHE_VERSION = 1


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class DatasetFiles:
    train: tuple[Path, ...]  # one file, or the shards in order
    val: Path


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
            return DatasetFiles(tuple(shards), vals[0])
        if len(shards) > 1 and vals and shard_dir == d and not single.exists():
            return DatasetFiles(tuple(shards), vals[0])
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


def load_shards(shards: tuple[Path, ...], keys_wanted=REQUIRED_KEYS + INFO_KEYS,
                progress: bool = True) -> dict[str, np.ndarray]:
    """Concatenate shards into memory-mapped ``.npy`` arrays (built once, then reused).

    The cache is keyed by the shards' names, sizes and mtimes; it is rebuilt when they change and
    published atomically (the manifest is written last), so an interrupted build is never used.
    """
    cache = _cache_dir(shards)
    manifest_path = cache / "manifest.json"
    manifest = _cache_manifest(shards)
    if manifest_path.is_file():
        try:
            saved = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            saved = None
        if saved and saved.get("source") == manifest:
            return {k: np.load(cache / f"{k}.npy", mmap_mode="r") for k in saved["keys"]}
    cache.mkdir(exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    # Pass 1: sizes. Pass 2: copy into preallocated memmaps (one shard in RAM at a time).
    from tqdm import tqdm

    from mac.console import show_progress
    lengths, dims = [], {}
    for p in shards:
        a = read_npz(p, keys_wanted)
        lengths.append(len(a["terminals"]))
        for k, v in a.items():
            shape, dtype = v.shape[1:], v.dtype
            if k in dims and dims[k] != (shape, dtype):
                raise DatasetError(f"{p}: {k!r} has shape/dtype {shape}/{dtype}, but earlier shards "
                                   f"have {dims[k][0]}/{dims[k][1]}")
            dims.setdefault(k, (shape, dtype))
        if set(a) != set(dims):
            raise DatasetError(f"{p}: keys {sorted(a)} differ from earlier shards' {sorted(dims)}")
    total = sum(lengths)
    outs = {k: np.lib.format.open_memmap(cache / f"{k}.npy.tmp", mode="w+", dtype=dt, shape=(total, *sh))
            for k, (sh, dt) in dims.items()}
    start = 0
    for p, n in tqdm(list(zip(shards, lengths)), desc="caching shards",
                     disable=not show_progress(progress)):
        a = read_npz(p, keys_wanted)
        for k, v in a.items():
            outs[k][start:start + n] = v
        start += n
    for k, m in outs.items():
        m.flush()
        del m
        os.replace(cache / f"{k}.npy.tmp", cache / f"{k}.npy")
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": manifest, "keys": sorted(dims)}))
    os.replace(tmp, manifest_path)
    return {k: np.load(cache / f"{k}.npy", mmap_mode="r") for k in dims}


def load_train_arrays(files: DatasetFiles, progress: bool = True) -> dict[str, np.ndarray]:
    if len(files.train) == 1:
        return read_npz(files.train[0])
    return load_shards(files.train, progress=progress)
