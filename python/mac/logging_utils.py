"""Run logs: append-only CSV files (never overwritten on resume), the source of truth, and optional
TensorBoard and Weights & Biases mirrors of their numeric columns."""

from __future__ import annotations

import csv
import math
import os
import secrets
import string
import sys
from pathlib import Path


class CsvLog:
    """Appends rows to ``path``; the header is fixed by the first row ever written to the file.

    On resume the existing header is reused; keys it does not have are dropped (and reported once),
    so a resumed run never rewrites or reorders what is on disk.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] | None = None
        self._warned: set[str] = set()
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), None)

    def write(self, row: dict) -> None:
        new_file = self.columns is None
        if new_file:
            self.columns = list(row)
        extra = set(row) - set(self.columns) - self._warned
        if extra:
            print(f"note: {self.path.name} has no column(s) {sorted(extra)}; not logged")
            self._warned |= extra
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new_file:
                w.writerow(self.columns)
            w.writerow([_fmt(row.get(c, "")) for c in self.columns])
            f.flush()


def _fmt(v):
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns as float lists; for repeated steps (a resume after a crash) the last row wins."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_step = {}
    for r in rows:
        by_step[int(float(r["step"]))] = r
    rows = [by_step[s] for s in sorted(by_step)]
    cols: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            try:
                cols.setdefault(k, []).append(float(v))
            except (TypeError, ValueError):
                cols.setdefault(k, []).append(float("nan"))
    return cols


class ScalarLog:
    """Interface of the optional loggers: ``write(prefix, row, step)`` mirrors a CSV row's numeric
    columns as ``<prefix>/<column>`` scalars at ``step``; ``close()`` ends the log."""

    @staticmethod
    def scalars(prefix: str, row: dict) -> dict[str, float]:
        return {f"{prefix}/{k}": v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}

    def write(self, prefix: str, row: dict, step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Loggers(ScalarLog):
    """Fans ``write``/``close`` out to the optional loggers given (``None`` entries are skipped)."""

    def __init__(self, *loggers: ScalarLog | None):
        self.loggers = [lg for lg in loggers if lg is not None]

    def write(self, prefix: str, row: dict, step: int) -> None:
        for lg in self.loggers:
            lg.write(prefix, row, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


class TensorBoard(ScalarLog):
    @staticmethod
    def writer_class():
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError("--tensorboard needs the tensorboard package: "
                               "pip install 'mac[tensorboard]'") from exc
        return SummaryWriter

    def __init__(self, log_dir: Path | None):
        self.writer = None
        if log_dir is not None:
            self.writer = self.writer_class()(str(log_dir))

    def write(self, prefix: str, row: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, v in self.scalars(prefix, row).items():
            self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


class WandbLog(ScalarLog):
    """A Weights & Biases run mirroring the CSV logs (``train/<key>``, ``eval/<key>`` at the training
    step). Its files go to ``<run_dir>/wandb``; its id is kept in ``<run_dir>/wandb_id`` so a resumed
    run continues the same W&B run. A failure while logging or closing is reported once and never
    stops training: the CSV files stay complete."""

    ID_FILE = "wandb_id"

    @staticmethod
    def module():
        try:
            import wandb
        except ImportError as exc:
            raise RuntimeError("--wandb needs the wandb package: pip install 'mac[wandb]'") from exc
        return wandb

    @classmethod
    def run_id(cls, run_dir: Path) -> str:
        """The run's W&B id: read from ``run_dir``, or made and stored there (atomically) once."""
        path = Path(run_dir) / cls.ID_FILE
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
        return run_id

    def __init__(self, run_dir: Path, *, project: str, group: str | None = None,
                 name: str | None = None, mode: str | None = None, config: dict | None = None):
        wandb = self.module()
        run_dir = Path(run_dir)
        self._warned = False
        try:
            self.run = wandb.init(project=project, group=group, name=name or run_dir.name, config=config,
                                  dir=str(run_dir), id=self.run_id(run_dir), resume="allow", mode=mode)
        except Exception as exc:
            raise RuntimeError(f"wandb.init failed ({type(exc).__name__}: {exc}); fix it, or run "
                               "without --wandb, or with --wandb_mode offline") from exc

    def _warn(self, what: str, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: wandb {what} failed ({type(exc).__name__}: {exc}); training goes on and "
                  "the CSV logs stay complete (further wandb errors are not reported)",
                  file=sys.stderr, flush=True)

    def write(self, prefix: str, row: dict, step: int) -> None:
        metrics = self.scalars(prefix, row)
        if self.run is None or not metrics:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as exc:
            self._warn("log", exc)

    def close(self) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.finish()
        except Exception as exc:
            self._warn("finish", exc)
