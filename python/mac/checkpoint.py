"""Atomic, pickle-free checkpoints that capture everything a resume needs.

A checkpoint is ``torch.save`` of a dict holding only tensors and plain containers/scalars, loaded
with ``weights_only=True`` (no arbitrary unpickling). Written to a temporary file in the same
directory, fsynced, then renamed: a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def rng_state() -> dict:
    """Every generator training draws from: torch (CPU and, where initialised, each CUDA device),
    numpy's and Python's global ones; a resume restores them all, so it continues the same curve."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda:
        if torch.cuda.device_count() < len(cuda):
            raise RuntimeError(f"the checkpoint holds the RNG state of {len(cuda)} CUDA device(s) but "
                               f"{torch.cuda.device_count()} are visible: resume on the same devices, or "
                               "with --device cpu (the run then continues on a different random stream)")
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(run_dir: Path, step: int, payload: dict, keep: int = 3) -> Path:
    """Write ``ckpt_<step>.pt`` atomically and delete all but the newest ``keep``."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"ckpt_{step:09d}.pt"
    payload = dict(payload, format_version=FORMAT_VERSION, step=int(step))
    atomic_write_bytes(path, lambda f: torch.save(payload, f))
    # A run directory has one writer at a time: temp files of another process are what a killed
    # run left half-written (they never count as checkpoints; this only reclaims their space).
    mine = f".tmp{os.getpid()}"
    for stale in ckpt_dir.glob(".ckpt_*.pt.tmp*"):
        if not stale.name.endswith(mine):
            stale.unlink(missing_ok=True)
    if keep > 0:
        for old in list_checkpoints(ckpt_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory / its checkpoints folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    for d in (p / "checkpoints", p):
        found = list_checkpoints(d)
        if found:
            return found[-1]
    raise FileNotFoundError(f"no checkpoint found at {p} (expected a ckpt_*.pt file, or a run "
                            "directory with checkpoints/ckpt_*.pt)")


def load_checkpoint(path: str | os.PathLike) -> dict:
    p = resolve_checkpoint(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or one that needs unpickling arbitrary objects
        raise ValueError(f"{p}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{p}: not a mac checkpoint (format_version "
                         f"{payload.get('format_version') if isinstance(payload, dict) else None})")
    payload["path"] = str(p)
    return payload


def forked_rng(device: torch.device):
    """A context in which side computations (evaluation, diagnostics) may draw random numbers
    without moving the training streams: CPU and, on a CUDA device, that device's generator."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=devices)
