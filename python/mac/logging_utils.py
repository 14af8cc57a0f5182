"""Run logs: append-only CSV files (never overwritten on resume) and optional TensorBoard."""

from __future__ import annotations

import csv
import math
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


class TensorBoard:
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
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
