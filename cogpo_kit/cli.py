"""The ``cogpo-kit`` command line.

    cogpo-kit run params/demo.yaml                      # all stages, notebooks executed by papermill
    cogpo-kit run params/demo.yaml --stages critique,rethink
    cogpo-kit sweep params/demo.yaml --grid pairs.beta_large=0.3,0.5,1.0   # one run per variant, stages shared
    cogpo-kit compare outputs/demo-sweep -o compare.html                  # several runs side by side
    cogpo-kit data check gsm8k_train                    # validate a CoT dataset, print counts
    cogpo-kit data contamination limo gsm8k_train --bench math500 aime24
    cogpo-kit train sft params/demo.yaml
    cogpo-kit train preference params/demo.yaml
    cogpo-kit eval params/demo.yaml
    cogpo-kit plan params/paper-qwen2.5-7b.yaml --gpu a800-80gb   # memory per GPU, time, agent calls, before a run

Every command takes ``--help``. Sub-commands import their modules lazily so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="+", help="YAML parameter file(s); later files win")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. -o sft.optim.learning_rate=1e-4 (repeatable)")


def _cmd_run(args) -> int:
    from cogpo_kit.pipeline.runner import run_pipeline

    stages = [s for s in (args.stages or "").split(",") if s] or None
    run_pipeline(args.params, overrides=args.overrides, stages=stages, from_stage=args.from_stage,
                 force=args.force, in_process=args.in_process)
    return 0


def _cmd_sweep(args) -> int:
    from cogpo_kit.pipeline.sweep import run_sweep

    stages = [s for s in (args.stages or "").split(",") if s] or None
    run_sweep(args.params, overrides=args.overrides, grid=args.grid, jobs=args.jobs, stages=stages,
              from_stage=args.from_stage, force=args.force, in_process=args.in_process, report=not args.no_report)
    return 0


def _cmd_compare(args) -> int:
    from cogpo_kit.viz.compare import main as compare_main

    models = [m for m in (args.models or "").split(",") if m] or None
    return compare_main(args.runs, out=args.out, reference=args.reference, models=models, resamples=args.resamples)


def _cmd_data_check(args) -> int:
    from cogpo_kit.data.check import main as check_main

    return check_main(args.source, path=args.path, on_invalid=args.on_invalid, rejects=args.rejects)


def _cmd_data_contamination(args) -> int:
    from cogpo_kit.evaluation.contamination import main as contamination_main

    return contamination_main(args.train, args.bench, ngram=args.ngram, threshold=args.threshold, out=args.out)


def _cmd_train(args) -> int:
    from cogpo_kit.params import load_params
    from cogpo_kit.training.stage import run_preference, run_sft

    params = load_params(args.params, args.overrides)
    (run_sft if args.what == "sft" else run_preference)(params)
    return 0


def _cmd_eval(args) -> int:
    from cogpo_kit.evaluation.stage import list_benchmarks, run_evaluate
    from cogpo_kit.params import load_params

    if args.list:
        for name, desc in list_benchmarks():
            print(f"{name:16s} {desc}")
        return 0
    if not args.params:
        print("cogpo-kit eval: give a params file (or --list)", file=sys.stderr)
        return 2
    run_evaluate(load_params(args.params, args.overrides))
    return 0


def _cmd_plan(args) -> int:
    from cogpo_kit.planning.report import main as plan_main

    return plan_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogpo-kit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline's notebooks in order with papermill")
    _add_params_args(p)
    p.add_argument("--stages", help="comma-separated stages to run (critique,rethink,pairs,sft,preference,evaluate,report)")
    p.add_argument("--from", dest="from_stage", help="run this stage and every later one")
    p.add_argument("--force", action="store_true", help="redo stages whose manifest matches their parameters and inputs")
    p.add_argument("--in-process", action="store_true", help="call the stage functions directly instead of executing notebooks")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run variants of a run (a grid or named variants), sharing unchanged stages")
    _add_params_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a parameter and its values; every combination of the --grid keys is a variant (repeatable)")
    p.add_argument("--jobs", type=int, default=None, help="variants run at the same time (default: the file's, else 1)")
    p.add_argument("--stages", help="comma-separated stages to run in every variant")
    p.add_argument("--from", dest="from_stage", help="run this stage and every later one")
    p.add_argument("--force", action="store_true", help="redo the stages (each shared stage once)")
    p.add_argument("--in-process", action="store_true", help="call the stage functions directly instead of executing notebooks")
    p.add_argument("--no-report", action="store_true", help="do not write the comparison report at the end")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("compare", help="compare runs: results with intervals, paired tests, figure, params diff")
    p.add_argument("runs", nargs="+", help="run folders, or a sweep folder (its variants)")
    p.add_argument("-o", "--out", help="HTML report to write (default: compare.html in the sweep folder or here)")
    p.add_argument("--reference", help="the run the others are compared with (default: the first)")
    p.add_argument("--models", help="comma-separated models to compare (default: every evaluated model)")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples of the paired intervals")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate a CoT dataset and print counts, lengths and problems found")
    c.add_argument("source", help="loader name (gsm8k_train, limo, ...) or a JSONL/JSON/parquet file")
    c.add_argument("--path", help="local file for a hub dataset name")
    c.add_argument("--on-invalid", choices=["error", "reject"], default="reject",
                   help="stop at the first bad row (error) or list every bad row (reject, default)")
    c.add_argument("--rejects", help="write rejected rows with their reasons to this JSONL file")
    c.set_defaults(func=_cmd_data_check)
    c = dsub.add_parser("contamination", help="training problems that overlap benchmark problems")
    c.add_argument("train", nargs="+", help="training sets (loader names or files)")
    c.add_argument("--bench", nargs="+", default=None, help="benchmarks (default: every shipped one)")
    c.add_argument("--ngram", type=int, default=13, help="n-gram size of the overlap test")
    c.add_argument("--threshold", type=float, default=0.5, help="share of a problem's n-grams found in a benchmark problem")
    c.add_argument("--out", help="write the overlapping rows to this JSONL file")
    c.set_defaults(func=_cmd_data_contamination)

    p = sub.add_parser("train", help="SFT or preference training (in-process, or under accelerate/torchrun)")
    p.add_argument("what", choices=["sft", "preference"])
    _add_params_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="generate and grade on benchmarks")
    p.add_argument("params", nargs="*", help="YAML parameter file(s)")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--list", action="store_true", help="list the registered benchmarks")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("plan", help="before a run: memory per GPU and time of each training stage, agent calls, "
                                    "generated tokens; warns when a stage will not fit")
    _add_params_args(p)
    from cogpo_kit.planning.config import add_arguments as plan_arguments

    plan_arguments(p)
    p.set_defaults(func=_cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from cogpo_kit.io import DataError
    from cogpo_kit.params import ParamsError

    errors: tuple[type[BaseException], ...] = (ParamsError, DataError)
    if args.command in ("run", "sweep"):
        from cogpo_kit.pipeline.runner import PipelineError

        errors += (PipelineError,)
    if args.command == "compare":
        errors += (FileNotFoundError, ValueError)
    if args.command == "plan":
        from cogpo_kit.planning.config import PlanError

        errors += (PlanError, FileNotFoundError)
    try:
        return int(args.func(args) or 0)
    except errors as exc:
        print(f"cogpo-kit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
