"""The ``mac`` command: info, data generate, train, eval, export, plot, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede any mujoco import


def _info(argv) -> int:
    p = argparse.ArgumentParser(prog="mac info", description="what was compiled and what is usable now")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="also run every usable native core against the PyTorch reference on small "
                        "shapes (float64 as the judge) and print what passed; exit 1 on a failure")
    p.add_argument("--kernels", action="store_true",
                   help="also disassemble the CUDA kernels (cuobjdump, a few seconds) and summarise their "
                        "GEMM hot loops: tensor-core MMAs, ldmatrix, generic and local-memory loads")
    args = p.parse_args(argv)
    import mac
    from mac._native import format_info
    d = mac.info(kernels=args.kernels)
    from mac import precision
    d["precision"] = precision.describe()     # above mac._native, which mac.precision asks
    print(json.dumps(d, indent=2, default=str) if args.json else format_info(d))
    if not args.check:
        return 0
    from mac import selfcheck
    results = [r for b in selfcheck.usable_backends() for r in selfcheck.check_backend(b)]
    print("\n" + selfcheck.format_results(results))
    return 0 if all(r.passed for r in results) else 1


def _data(argv) -> int:
    p = argparse.ArgumentParser(prog="mac data", description="dataset tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    from mac.data import download, generate
    g = sub.add_parser("generate", help="generate an OGBench-format dataset locally with the scripted oracles")
    generate.add_arguments(g)
    d = sub.add_parser("download", help="download the official OGBench dataset files")
    download.add_arguments(d)
    args = p.parse_args(argv)
    if args.cmd == "download":
        return download.run(args)
    return generate.run(args)


def _train(argv) -> int:
    from mac.train import main
    return main(argv)


def _eval(argv) -> int:
    from mac.eval_cli import main
    return main(argv)


def _export(argv) -> int:
    from mac.export import main
    return main(argv)


def _plot(argv) -> int:
    p = argparse.ArgumentParser(prog="mac plot", description="plot a run's learning curve to PNG, "
                                "or several runs' success curves on one figure")
    p.add_argument("run_dir", nargs="+")
    p.add_argument("--out", default=None, help="default: RUN_DIR/learning_curve.png (one run); "
                                               "required for several runs")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (several runs)")
    args = p.parse_args(argv)
    from mac.plot import plot_run, plot_runs
    try:
        if len(args.run_dir) == 1 and not args.labels:
            print(plot_run(args.run_dir[0], args.out))
        elif not args.out:
            p.error("several runs need --out FILE.png")
        else:
            print(plot_runs(args.run_dir, args.out, args.labels))
    except (FileNotFoundError, ValueError) as exc:
        print(f"mac plot: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _bench(argv) -> int:
    p = argparse.ArgumentParser(prog="mac bench", description="throughput benchmarks -> markdown table",
                                epilog="--agent.<key>=<value>: a setting of the timed training step (--train-step), "
                                       "as mac train takes it, e.g. --agent.num_samples_train=4")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: native CPU core vs torch eager/compile vs FMA peak; "
                        "cuda: CUDA core vs torch eager, eager in a CUDA graph and torch.compile max-autotune, "
                        "TF32 and bf16, vs the GPU's peak and issue 20's goals")
    from mac import bench, bench_cuda
    from mac.config import split_agent_flags
    bench.add_arguments(p)
    bench_cuda.add_cuda_arguments(p)
    try:   # --agent.<key>=<value>: the timed training step's settings, as in mac train
        agent_settings, argv = split_agent_flags(list(argv))
    except ValueError as exc:
        p.error(str(exc))
    args = p.parse_args(argv)
    args.agent_flags = [f"--agent.{key}={value}" for key, value in agent_settings]
    if args.agent_flags:   # check their values now, not after minutes of rollout timings
        train_step = args.train_step or bench.default_train_step(args.device, args.quick)
        if train_step == "none":
            p.error(f"{' '.join(args.agent_flags)} set the timed training step, but --train-step none "
                    "times none; drop them or choose --train-step cpu|paper")
        try:
            bench.train_step_config(train_step, args.agent_flags)
        except ValueError as exc:
            p.error(f"{' '.join(args.agent_flags)}: {exc}")
    if args.device == "cuda":
        try:
            table = bench_cuda.run_cuda_bench(args)
        except (RuntimeError, ValueError) as exc:  # no usable GPU; options the benchmark refuses
            print(f"mac bench: error: {exc}", file=sys.stderr)
            return 2
        print(table)
        if args.output:
            with open(args.output, "w") as f:
                f.write(table + "\n")
        return 0
    return bench.run(args)


COMMANDS = {"info": _info, "data": _data, "train": _train, "eval": _eval, "export": _export,
            "plot": _plot, "bench": _bench}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from mac.console import silence_harmless_warnings
    silence_harmless_warnings()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mac {" + ",".join(COMMANDS) + "} ...\n\n"
              "  info            what was compiled (CPU ISA, OpenMP, CUDA) and what is usable now\n"
              "  data generate   make an OGBench-format dataset locally\n"
              "  data download   download the official OGBench dataset files\n"
              "  train           train MAC (no arguments: a small local cube-single demo)\n"
              "  eval            evaluate a checkpoint or a policy file\n"
              "  export          write a checkpoint's policy to a small file for mac eval --policy\n"
              "  plot            learning curve of a run directory -> PNG\n"
              "  bench           rollout / best-of-N throughput table")
        return 0
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"mac: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return cmd(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
