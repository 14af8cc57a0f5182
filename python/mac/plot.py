"""``mac plot RUN_DIR``: learning curves (success vs steps and wall time, losses) as a PNG."""

from __future__ import annotations

from pathlib import Path

from mac.logging_utils import read_csv


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    eval_csv, train_csv = run_dir / "eval.csv", run_dir / "train.csv"
    if not eval_csv.is_file() and not train_csv.is_file():
        raise FileNotFoundError(f"{run_dir} has neither eval.csv nor train.csv; is it a mac run directory?")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if eval_csv.is_file():
        ev = read_csv(eval_csv)
        tasks = sorted(k for k in ev if k.startswith("task") and k.endswith("_success"))
        for k in tasks:
            axes[0].plot(ev["step"], ev[k], alpha=0.5, label=k.replace("_success", ""))
        axes[0].plot(ev["step"], ev["success"], "k-o", label="overall")
        axes[1].plot([t / 60 for t in ev["time_s"]], ev["success"], "k-o")
    for ax, xl in ((axes[0], "gradient steps"), (axes[1], "training time (min, evaluations excluded)")):
        ax.set(xlabel=xl, ylabel="success rate", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if train_csv.is_file():
        tr = read_csv(train_csv)
        for k in sorted(k for k in tr if k.startswith("loss/") and k != "loss/total"):
            axes[2].plot(tr["step"], tr[k], label=k[5:])
        axes[2].set(xlabel="gradient steps", ylabel="loss", yscale="log")
        axes[2].legend(fontsize=8)
        axes[2].grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """Several runs on one figure: overall success vs gradient steps and vs training time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    labels = list(labels) if labels else [d.name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    missing = [str(d) for d in run_dirs if not (d / "eval.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"no eval.csv in {', '.join(missing)}; are they mac run directories?")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for d, label in zip(run_dirs, labels):
        ev = read_csv(d / "eval.csv")
        axes[0].plot(ev["step"], ev["success"], "-o", label=label)
        axes[1].plot([t / 60 for t in ev["time_s"]], ev["success"], "-o", label=label)
    for ax, xl in ((axes[0], "gradient steps"), (axes[1], "training time (min, evaluations excluded)")):
        ax.set(xlabel=xl, ylabel="success rate", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
