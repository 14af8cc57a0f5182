"""Policy files: an evaluated policy, published so that anyone can check its number.

``mac export --restore_path RUN_DIR_OR_CKPT --out FILE`` writes what acting reads (actor, critic,
normalisers, agent config, dims, action_execute and num_samples defaults: exactly the
:func:`mac.evaluate.policy_state` that evaluation workers receive), the env name, provenance and a
format version; no optimiser state, no target, value, flow or model networks. Like a checkpoint it is
``torch.save`` of tensors and plain containers, written atomically and loaded with
``weights_only=True`` (no arbitrary unpickling). ``mac eval --policy FILE`` evaluates it as
``mac eval --restore_path`` does and prints the file's sha256, which names the file a number came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mac.checkpoint import atomic_write_bytes, load_checkpoint, resolve_checkpoint
from mac.data.names import EnvSpec, UnknownEnvError, validate_env_name
from mac.evaluate import Policy, checkpoint_policy_state, policy_from_state, policy_state

POLICY_FORMAT = "mac-policy"
POLICY_FORMAT_VERSION = 1
MAKE_ONE = "make one with: mac export --restore_path RUN_DIR --out FILE"


class PolicyFileError(ValueError):
    """The file is not a policy file this mac can evaluate; the message says how to fix that."""


@dataclass
class PolicySource:
    """A policy to evaluate, its environment, and where it came from (printed with the result)."""

    policy: Policy
    spec: EnvSpec
    about: dict
    path: Path  # the file read; a video goes next to it by default


def _short(exc: BaseException) -> str:
    """Type and first sentence: torch's weights_only errors run to a screenful."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line.split('. ')[0]}"


def from_checkpoint(restore_path: str | os.PathLike) -> PolicySource:
    """The policy of a checkpoint (or of the newest checkpoint of a run directory)."""
    try:
        ck = load_checkpoint(restore_path)
    except ValueError as exc:
        if exc.__cause__ is None:  # a file that loads but is no checkpoint: the message says so
            raise
        raise ValueError(f"{resolve_checkpoint(restore_path)} is not a mac checkpoint "
                         f"({_short(exc.__cause__)}); pass a run directory or one of its "
                         "checkpoints/ckpt_*.pt") from exc
    path = Path(ck["path"])
    if ck.get("format") == POLICY_FORMAT:
        raise PolicyFileError(f"{path} is a policy file, not a checkpoint: evaluate it with "
                              f"mac eval --policy {path}")
    spec = validate_env_name(ck["env_name"])
    try:
        policy = policy_from_state(checkpoint_policy_state(ck))
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a complete mac checkpoint ({_short(exc)})") from exc
    return PolicySource(policy, spec, {"checkpoint": str(path), "step": ck["step"]}, path)


def load_policy_file(path: str | os.PathLike) -> PolicySource:
    """Read a file written by :func:`export_policy`; ``about`` holds its sha256 and provenance."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise PolicyFileError(f"{p} is a directory, not a policy file (a run directory is evaluated "
                              f"with mac eval --restore_path {p})")
    if not p.is_file():
        raise FileNotFoundError(f"no policy file at {p}; {MAKE_ONE}")
    return read_policy(p.read_bytes(), p)


def read_policy(data: bytes, p: Path) -> PolicySource:
    """The policy in the bytes of a policy file (``p`` names it in messages)."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, not torch.save output, or it needs arbitrary unpickling
        raise PolicyFileError(f"{p} is not a mac policy file (torch.load with weights_only=True fails: "
                              f"{_short(exc)}); {MAKE_ONE}") from exc
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        if isinstance(payload, dict) and "optimizer" in payload:
            raise PolicyFileError(f"{p} is a mac checkpoint, not a policy file: evaluate it with "
                                  f"mac eval --restore_path {p}, or make a policy file of it with "
                                  f"mac export --restore_path {p} --out FILE")
        raise PolicyFileError(f"{p} is not a mac policy file; {MAKE_ONE}")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise PolicyFileError(f"{p}: damaged policy file (format_version {version!r}); {MAKE_ONE}")
    provenance = payload.get("provenance") or {}
    if version > POLICY_FORMAT_VERSION:
        import mac
        raise PolicyFileError(f"{p} has policy format version {version} (made by mac "
                              f"{provenance.get('mac_version')}); this mac {mac.__version__} reads "
                              f"version {POLICY_FORMAT_VERSION} and older: upgrade mac to evaluate it")
    try:
        spec = validate_env_name(str(payload.get("env_name")))
    except UnknownEnvError as exc:
        raise PolicyFileError(f"{p} is for an environment this mac does not know: {exc} (install the "
                              f"mac and ogbench versions that made the file: mac "
                              f"{provenance.get('mac_version')})") from exc
    try:
        policy = policy_from_state(payload["policy"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PolicyFileError(f"{p}: damaged policy file ({_short(exc)}); {MAKE_ONE}") from exc
    about = {"policy": str(p), "policy_sha256": hashlib.sha256(data).hexdigest(),
             "checkpoint": provenance.get("checkpoint"), "step": provenance.get("step")}
    return PolicySource(policy, spec, about, p)


def with_acting(policy: Policy, action_execute: int | None, num_samples: int | None) -> Policy:
    """``policy`` acting with these settings where given (None: its own)."""
    chunk_len = policy.agent.config.chunk_len
    k = policy.action_execute if action_execute is None else action_execute
    n = policy.num_samples if num_samples is None else num_samples
    if not 1 <= k <= chunk_len:
        raise ValueError(f"--action_execute must be in [1, {chunk_len}] (the chunk length), got {k}")
    if n < 1:
        raise ValueError(f"--num_samples must be >= 1, got {n}")
    return dataclasses.replace(policy, action_execute=k, num_samples=n)


def _run_argv(checkpoint: Path) -> list | None:
    """The command line of the run a checkpoint belongs to (its flags.json), if recorded."""
    flags = checkpoint.parent.parent / "flags.json"
    if checkpoint.parent.name != "checkpoints" or not flags.is_file():
        return None
    try:
        return json.loads(flags.read_text()).get("argv")
    except (OSError, ValueError, AttributeError):
        return None


def policy_file_bytes(source: PolicySource) -> bytes:
    """The policy file of a policy read from a checkpoint (no time stamp: the same checkpoint and
    settings always give the same bytes, hence the same sha256)."""
    import mac
    checkpoint = source.path.resolve()
    provenance = {"checkpoint": str(checkpoint), "step": int(source.about["step"]),
                  # str(): torch.__version__ is a str subclass that weights_only loading rejects
                  "mac_version": str(mac.__version__), "torch_version": str(torch.__version__),
                  "argv": _run_argv(checkpoint)}
    payload = {"format": POLICY_FORMAT, "format_version": POLICY_FORMAT_VERSION,
               "env_name": source.spec.name, "policy": policy_state(source.policy),
               "provenance": provenance}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def export_policy(restore_path: str | os.PathLike, out: str | os.PathLike, *, force: bool = False,
                  action_execute: int | None = None, num_samples: int | None = None
                  ) -> tuple[Path, str, PolicySource]:
    """Write the policy file of a checkpoint to ``out`` (its directory is made when missing);
    returns (path, sha256 of the file, the source)."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; give a file name, e.g. {out / 'policy.pt'}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    source = from_checkpoint(restore_path)
    source.policy = with_acting(source.policy, action_execute, num_samples)
    data = policy_file_bytes(source)
    read_policy(data, out)  # what is written must load, as mac eval --policy will load it
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot make the directory {out.parent} for --out: {exc.strerror}") from exc
    atomic_write_bytes(out, lambda f: f.write(data))
    return out, hashlib.sha256(data).hexdigest(), source


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="mac export", description="write a checkpoint's policy (actor, "
                                "critic, normalisers, config, provenance) to a small file that "
                                "mac eval --policy evaluates")
    p.add_argument("--restore_path", required=True,
                   help="run directory (its newest checkpoint) or checkpoint file")
    p.add_argument("--out", required=True, help="policy file to write, e.g. policy.pt (a missing "
                                                "directory is made)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--action_execute", type=int, default=None,
                   help="default actions executed per chunk stored in the file (default: the run's)")
    p.add_argument("--num_samples", type=int, default=None,
                   help="default best-of-N stored in the file (default: the run's num_samples_test)")
    args = p.parse_args(argv)
    try:
        out, sha, source = export_policy(args.restore_path, args.out, force=args.force,
                                         action_execute=args.action_execute, num_samples=args.num_samples)
    except (OSError, ValueError) as exc:
        print(f"mac export: error: {exc}", file=sys.stderr)
        return 2
    print(f"[mac] wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {sha})\n"
          f"[mac]   from {source.about['checkpoint']} (step {source.about['step']}), {source.spec.name}, "
          f"action_execute {source.policy.action_execute}, num_samples {source.policy.num_samples}\n"
          f"[mac]   evaluate it with: mac eval --policy {out}")
    return 0
