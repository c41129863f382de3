"""The global batch of a training launch: processes x per-device batch x gradient accumulation steps.

    python -m cogpo_kit.launch.global_batch sft --processes 16 params/paper-qwen2.5-7b.yaml
    python -m cogpo_kit.launch.global_batch preference --processes 16 --expect 96 params/paper-qwen2.5-7b.yaml \\
        -o preference.optim.gradient_accumulation_steps=6

prints ``preference: global batch 96 = 16 processes x 1 per device x 6 accumulation steps``. With ``--expect N``
another global batch is an error that names the override giving N (when one does): the paper trains with a
global batch of 96 (Table 8: 8 GPUs x 1 x 12), so more GPUs need fewer accumulation steps.
``params/launch/train_multinode.sbatch`` and ``train_multinode.sh`` call it before launching when
``GLOBAL_BATCH`` is set. Exit code 0 when the batch is as expected, 2 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def describe(stage: str, processes: int, per_device: int, accumulation: int) -> str:
    """``"sft: global batch 96 = 8 processes x 1 per device x 12 accumulation steps"``."""
    total = processes * per_device * accumulation
    return (f"{stage}: global batch {total} = {processes} processes x {per_device} per device x "
            f"{accumulation} accumulation steps")


def accumulation_for(expect: int, processes: int, per_device: int) -> int | None:
    """The accumulation steps giving a global batch of ``expect``, or ``None`` when none does."""
    step = processes * per_device
    return expect // step if expect >= step and expect % step == 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cogpo_kit.launch.global_batch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["sft", "preference"])
    p.add_argument("params", nargs="+", help="YAML parameter file(s); later files win")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter override, as given to cogpo-kit train (repeatable)")
    p.add_argument("--processes", type=int, required=True, help="training processes in all (GPUs over all nodes)")
    p.add_argument("--expect", type=int, default=None, help="the global batch the run must have (paper: 96)")
    args = p.parse_args(argv)
    from cogpo_kit.params import ParamsError, load_params

    try:
        params = load_params(args.params, args.overrides)
    except ParamsError as exc:
        print(f"global_batch: error: {exc}", file=sys.stderr)
        return 2
    optim = getattr(params, args.stage).optim
    line = describe(args.stage, args.processes, optim.per_device_batch_size, optim.gradient_accumulation_steps)
    print(line)
    total = args.processes * optim.per_device_batch_size * optim.gradient_accumulation_steps
    if args.expect is None or total == args.expect:
        return 0
    fix = accumulation_for(args.expect, args.processes, optim.per_device_batch_size)
    how = (f"add -o {args.stage}.optim.gradient_accumulation_steps={fix}" if fix else
           f"no accumulation gives {args.expect} with {args.processes} processes x {optim.per_device_batch_size} "
           "per device; change the per-device batch or the number of GPUs")
    print(f"global_batch: error: {args.stage} global batch {total}, expected {args.expect}: {how}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
