"""Downloading the official OGBench dataset files, safely.

Same source and layout as ``ogbench.download_datasets``: ``<DATASET_URL>/<name>.npz`` and
``<DATASET_URL>/<name>-val.npz`` into ``dataset_dir``. ``ogbench.utils.DATASET_URL`` is read at call
time, so it can be pointed elsewhere (a mirror, a test server). Differences from ``ogbench``:

* every file is written to a uniquely named temporary file in ``dataset_dir`` and moved into place
  with :func:`os.replace` only once it is complete: its size matches ``Content-Length`` (when the
  server sends one), its zip CRCs check out, and it is an ``.npz`` holding ``observations``,
  ``actions`` and ``terminals`` of the same length. A failed or interrupted download (including
  Ctrl-C) removes its temporary file and never leaves anything under the final name;
* errors are :class:`DownloadError` naming the URL and the reason; the sockets have a timeout.

Files already present under their final name are kept, so a retry fetches only what is missing.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from mac.data.files import REQUIRED_KEYS, DatasetError

DEFAULT_DATASET_DIR = "~/.ogbench/data"
TIMEOUT_S = 30.0          # per socket operation (connect, each read), not for the whole file
CHUNK_BYTES = 1 << 20


class DownloadError(DatasetError):
    """An official dataset file could not be downloaded (network, HTTP or content error)."""


def _base_url(url: str | None) -> str:
    if url is None:
        import ogbench.utils  # read at call time: tests and mirrors may change it
        url = ogbench.utils.DATASET_URL
    return url.rstrip("/")


def _check_npz(path: Path, url: str) -> None:
    """Cheap but complete check of a downloaded file without loading the arrays into memory:
    every member's CRC, the required keys, and that their first dimensions agree and are > 0.
    (``read_npz`` would load everything into RAM and reject visual datasets' uint8 observations.)"""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{url}: the downloaded file is corrupt (bad CRC in member {bad!r})")
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in REQUIRED_KEYS if k not in f.files]
            if missing:
                raise DownloadError(f"{url}: the downloaded file is not an OGBench dataset: missing "
                                    f"key(s) {missing}; found {sorted(f.files)}")
        lengths = {}
        with zipfile.ZipFile(path) as zf:
            for k in REQUIRED_KEYS:
                with zf.open(f"{k}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(member)
                lengths[k] = shape[0] if shape else 0
    except DownloadError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise DownloadError(f"{url}: the downloaded file is not a readable .npz "
                            f"({type(exc).__name__}: {exc})") from exc
    if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
        raise DownloadError(f"{url}: the downloaded file has empty or mismatched arrays {lengths}")


def _download_file(url: str, dest: Path, progress: bool, timeout: float) -> None:
    """Download ``url`` to ``dest`` atomically (see the module docstring)."""
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise DownloadError(f"{url}: cannot connect ({exc.reason})") from exc
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            from tqdm import tqdm

            from mac.console import show_progress
            # O_EXCL: never write into someone else's file; 0o666 & umask: normal permissions.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            received = 0
            with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                                   unit_divisor=1024, desc=dest.name,
                                                   disable=not show_progress(progress),
                                                   miniters=1) as bar:
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        if total is not None and received != total:
            raise DownloadError(f"{url}: incomplete download: received {received} of {total} bytes")
        _check_npz(tmp, url)
        os.replace(tmp, dest)
    except DownloadError:
        raise
    except http.client.IncompleteRead as exc:
        raise DownloadError(f"{url}: incomplete download: the connection closed before the end of "
                            f"the file ({exc.expected} more bytes expected)") from exc
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, disk full, ...
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        raise DownloadError(f"{url}: download failed ({reason})") from exc
    finally:  # any exception, KeyboardInterrupt included: nothing half-written stays behind
        with contextlib.suppress(OSError):
            tmp.unlink()


def download_dataset(dataset_name: str, dataset_dir: str | os.PathLike = DEFAULT_DATASET_DIR, *,
                     progress: bool = True, url: str | None = None,
                     timeout: float = TIMEOUT_S) -> tuple[Path, Path]:
    """Download ``<dataset_name>.npz`` and ``<dataset_name>-val.npz`` into ``dataset_dir``.

    Args:
        dataset_name: OGBench dataset name, e.g. ``'cube-single-play-v0'`` (not an env name such as
            ``...-singletask-task2-v0``; map those with ``parse_env_name(name).dataset_name``).
        dataset_dir: Target directory (created if missing; ``~`` expanded).
        progress: Show a tqdm progress bar per file.
        url: Base URL; default ``ogbench.utils.DATASET_URL`` as it is at call time.
        timeout: Seconds any single socket operation may take.

    Returns:
        ``(train_path, val_path)``. Files already present are not downloaded again.

    Raises:
        DownloadError: naming the URL and the reason. No partial file is left under a final name.
    """
    base = _base_url(url)
    d = Path(dataset_dir).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create dataset directory {d}: {exc}") from exc
    paths = (d / f"{dataset_name}.npz", d / f"{dataset_name}-val.npz")
    for path in paths:
        if path.is_file():
            continue
        file_url = f"{base}/{path.name}"
        if progress:
            print(f"[mac] downloading {file_url} -> {path}", file=sys.stderr, flush=True)
        _download_file(file_url, path, progress, timeout)
    return paths


# --------------------------------------------------------------------------------------------------
# CLI (wired as `mac data download` by mac.cli)
# --------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """Arguments of ``mac data download``."""
    parser.add_argument("--env_name", required=True,
                        help="dataset name, e.g. cube-single-play-v0 (single-task/oraclerep names map "
                             "to their dataset)")
    parser.add_argument("--dataset_dir", default=DEFAULT_DATASET_DIR,
                        help=f"where to put <dataset>.npz and <dataset>-val.npz (default {DEFAULT_DATASET_DIR})")
    parser.add_argument("--no_progress", action="store_true")


def run(args) -> int:
    """Entry point of ``mac data download``; returns the process exit code."""
    from mac.data.names import validate_env_name
    try:
        name = validate_env_name(args.env_name).dataset_name
        train, val = download_dataset(name, args.dataset_dir, progress=not args.no_progress)
    except (ValueError, DatasetError) as exc:  # DownloadError is a DatasetError (a ValueError)
        print(f"mac data download: error: {exc}", file=sys.stderr)
        return 2
    print(f"{train}\n{val}")
    return 0
