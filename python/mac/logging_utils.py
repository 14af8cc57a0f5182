"""Run logs: CSV files, the source of truth, and optional TensorBoard and Weights & Biases mirrors of
their numeric columns. Training appends to the CSV files; a resume first cuts them back to the
checkpoint's step (``truncate_after_step``), so a run killed between two checkpoints logs no step twice."""

from __future__ import annotations

import csv
import io
import math
import secrets
import string
import sys
from pathlib import Path


class CsvLog:
    """Appends rows to ``path``; the header is fixed by the first row ever written to the file.

    On resume the existing header is reused; keys it does not have are dropped (and reported once),
    so a resumed run never reorders what is on disk. (The rows past the checkpoint it resumes from
    are dropped before, by ``truncate_after_step``.)
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


def _csv_records(text: str) -> list[tuple[str, list[str]]]:
    """(raw text, fields) of each CSV record of ``text``, the raw text exactly as in ``text`` (line
    ending included, none on a torn last line), also for a quoted field spanning lines."""
    consumed: list[str] = []

    def lines():
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    records = []
    for fields in csv.reader(lines()):   # pulls exactly the lines of one record per row
        records.append(("".join(consumed), fields))
        consumed.clear()
    return records


def truncate_after_step(path: Path, step: int) -> tuple[int, bool]:
    """On resume from the checkpoint of ``step``: drop the rows of the CSV log at ``path`` past
    ``step`` (the run that stopped logged them after that checkpoint; the resumed run logs those steps
    again), like TensorBoard's ``purge_step``. A torn last line (a kill mid-write: no line end, or not
    the header's column count) is dropped too. Header and kept rows stay byte for byte, in order.

    The file is replaced atomically (temp file, fsync, rename), and only if something is dropped: a
    missing file or one with no row past ``step`` is not touched. Returns (rows dropped, the torn
    line included; whether the last line was torn).
    """
    path = Path(path)
    if not path.is_file():
        return 0, False
    # Bytes that are not UTF-8 go through unchanged (surrogateescape): kept rows stay byte for byte.
    records = _csv_records(path.read_bytes().decode("utf-8", "surrogateescape"))
    if not records:
        return 0, False
    last_raw, last_fields = records[-1]
    torn = not last_raw.endswith("\n") or (len(records) > 1 and len(last_fields) != len(records[0][1]))
    if torn:
        records.pop()
    kept = records[:1]                   # the header (none left if it was itself torn)
    if records:
        header = records[0][1]
        if "step" not in header:
            raise ValueError(f"{path} has no 'step' column (header {header}): it is not a log of "
                             "mac train; move it out of the run directory, then resume again")
        step_column = header.index("step")
        for number, (raw, fields) in enumerate(records[1:], start=1):
            if len(fields) != len(header) or not fields[step_column].isdigit():
                raise ValueError(f"{path}: row {number} ({raw.rstrip()!r}) does not match the header "
                                 f"{header}; repair or delete that row, then resume again")
            if int(fields[step_column]) <= step:
                kept.append((raw, fields))
    dropped = len(records) - len(kept) + torn
    if dropped:
        from mac.checkpoint import atomic_write_bytes   # not at the top: it imports torch (mac plot)
        text = "".join(raw for raw, _ in kept).encode("utf-8", "surrogateescape")
        atomic_write_bytes(path, lambda f: f.write(text))
    return dropped, torn


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns as float lists, by step. A step logged twice (only in a run directory of a mac older
    than ``truncate_after_step``, resumed after a crash) appears once: the last row wins."""
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

    def __init__(self, log_dir: Path | None, purge_step: int | None = None):
        """``purge_step``: on resume, the checkpoint's step + 1. TensorBoard then hides the events of
        that step and later ones written before (by the run that stopped), as the CSV files drop them."""
        self.writer = None
        if log_dir is not None:
            self.writer = self.writer_class()(str(log_dir), purge_step=purge_step)

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
    stops training: the CSV files stay complete.

    Unlike the CSV files and TensorBoard, W&B is not cut back on resume: the steps a killed run
    logged after its last checkpoint may stay in the W&B run (wandb ignores the resumed run's logs of
    steps below the run's last one). wandb's ``resume_from="<id>?_step=<N>"`` would rewind the run,
    but it is beta, is done by the W&B server (not in an offline run) and excludes ``resume``."""

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
        from mac.checkpoint import atomic_write_text
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        atomic_write_text(path, run_id + "\n")
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
