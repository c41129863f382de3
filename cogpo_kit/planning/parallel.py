"""How a training stage is spread over GPUs, read from its ``launch`` parameters and the files they name.

``sft.launch`` / ``preference.launch`` (:class:`~cogpo_kit.training.config.LaunchParams`) give the launcher, the
process and machine counts and an accelerate config; the accelerate YAML gives the distributed type, and for
DeepSpeed its ``deepspeed_config_file`` JSON (or the YAML's own ``zero_stage`` / ``offload_*_device`` keys) gives
the ZeRO stage, the offload devices and the communication buckets. ``launch.num_processes`` wins over the
config's ``num_processes``, as the stage passes it to the launcher.

Paths are found as the stage's launcher finds them (:class:`~cogpo_kit.training.config.LaunchParams`): the config
below the current directory or the first folder above it that holds it, the DeepSpeed JSON below the folder the
launcher then runs in; failing those, below the kit's checkout (``params/launch/...`` from anywhere). A missing or
unreadable file is a :class:`PlanError` naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cogpo_kit.planning.config import PlanError

_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Parallelism:
    """The layout a training stage runs with."""

    processes: int = 1
    """Training processes in all (one per GPU)."""
    machines: int = 1
    """Nodes."""
    kind: str = "single"
    """``single`` (one process), ``ddp`` (data parallel, every GPU a full copy) or ``deepspeed``."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0 without DeepSpeed)."""
    offload_optimizer: bool = False
    """ZeRO keeps the optimizer states (and the fp32 master weights) in CPU memory or on NVMe."""
    offload_params: bool = False
    """ZeRO-3 keeps the 16-bit weights in CPU memory or on NVMe, gathered to the GPU layer by layer."""
    overlap_comm: bool = False
    """DeepSpeed ``overlap_comm`` (its buckets then take 4.5 times their size, DeepSpeed's own figure)."""
    reduce_bucket: Optional[float] = None
    """``reduce_bucket_size`` in elements (``None``: ``auto``, which accelerate fills with hidden x hidden)."""
    allgather_bucket: Optional[float] = None
    """``allgather_bucket_size`` in elements (ZeRO-1/2; DeepSpeed's default 5e8 where unset)."""
    prefetch_bucket: Optional[float] = None
    """``stage3_prefetch_bucket_size`` in elements (``None``: ``auto``, 0.9 x hidden x hidden)."""
    config: Optional[str] = None
    """The accelerate config file read (``None``: none)."""
    description: str = "in-process, one device"
    """One line for the plan's table."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Anything the reader should know (a config's process count overridden, a file not found...)."""


def _find(path: str, key: str, base: Optional[Path] = None) -> Path:
    """``path`` as the stage's launcher finds it: absolute, or below ``base`` (the folder the launcher runs in),
    else below the current directory or the first folder above it that holds it, else below the kit's checkout."""
    given = Path(path).expanduser()
    if given.is_absolute():
        candidates = [given]
    else:
        here = Path.cwd()
        candidates = ([base / given] if base is not None else []) + [d / given for d in (here, *here.parents)]
        candidates.append(_ROOT / given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise PlanError(f"{key}: file '{path}' not found (looked in the current directory, the folders above it and "
                    f"{_ROOT})")


def _load(path: Path, key: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # OSError, a JSON or YAML syntax error
        raise PlanError(f"{key}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{key}: {path} is not a mapping")
    return data


def _number(value: Any) -> Optional[float]:
    if value is None or value == "auto":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _offloaded(section: Any) -> bool:
    if isinstance(section, dict):
        return str(section.get("device", "none")).lower() in ("cpu", "nvme")
    return str(section or "none").lower() in ("cpu", "nvme")


def read_parallelism(launch, key: str) -> Parallelism:
    """The :class:`Parallelism` of a stage's ``launch`` parameters; ``key`` (``sft.launch``) names them in errors."""
    processes, machines = int(launch.num_processes), int(launch.num_machines)
    notes: list[str] = []
    if not launch.enabled:
        return Parallelism()
    where = f"{processes} GPU{'s' if processes > 1 else ''}{f' on {machines} nodes' if machines > 1 else ''}"
    if launch.launcher == "torchrun" or not launch.config:
        kind = "ddp" if processes > 1 else "single"
        return Parallelism(processes=processes, machines=machines, kind=kind,
                           description=f"{where}, {launch.launcher}{' DDP' if kind == 'ddp' else ''}")
    cfg_path = _find(launch.config, f"{key}.config")
    cfg = _load(cfg_path, f"{key}.config")
    given = Path(launch.config)
    run_in = cfg_path.parents[len(given.parts) - 1] if not given.is_absolute() else Path.cwd()  # the launcher's cwd
    cfg_procs = cfg.get("num_processes")
    if isinstance(cfg_procs, int) and cfg_procs != processes:
        notes.append(f"{key}: {launch.config} says num_processes {cfg_procs}; {key}.num_processes ({processes}) is "
                     "what the stage passes to the launcher, so the plan uses it")
    dist = str(cfg.get("distributed_type", "NO")).upper()
    if dist != "DEEPSPEED":
        kind = "ddp" if processes > 1 else "single"
        if dist not in ("MULTI_GPU", "NO"):
            notes.append(f"{key}: distributed_type {dist} in {launch.config} is planned as plain data parallel")
        return Parallelism(processes=processes, machines=machines, kind=kind, config=str(launch.config),
                           description=f"{where}, {'DDP' if kind == 'ddp' else 'one process'} ({Path(launch.config).name})",
                           notes=tuple(notes))
    ds = cfg.get("deepspeed_config") or {}
    zero: dict = {}
    if ds.get("deepspeed_config_file"):
        ds_path = _find(str(ds["deepspeed_config_file"]), f"{key}.config deepspeed_config_file", base=run_in)
        zero = _load(ds_path, f"{key}.config deepspeed_config_file").get("zero_optimization") or {}
        stage = int(zero.get("stage", 0))
        off_opt, off_par = _offloaded(zero.get("offload_optimizer")), _offloaded(zero.get("offload_param"))
    else:
        stage = int(ds.get("zero_stage", 0))
        off_opt = _offloaded(ds.get("offload_optimizer_device"))
        off_par = _offloaded(ds.get("offload_param_device"))
    if off_par and stage != 3:
        notes.append(f"{key}: parameter offload needs ZeRO-3 (the config has stage {stage}); planned without it")
        off_par = False
    offload = " + ".join(x for x, on in (("optimizer offload", off_opt), ("parameter offload", off_par)) if on)
    return Parallelism(processes=processes, machines=machines, kind="deepspeed", zero_stage=stage,
                       offload_optimizer=off_opt, offload_params=off_par, overlap_comm=bool(zero.get("overlap_comm")),
                       reduce_bucket=_number(zero.get("reduce_bucket_size")),
                       allgather_bucket=_number(zero.get("allgather_bucket_size")),
                       prefetch_bucket=_number(zero.get("stage3_prefetch_bucket_size")), config=str(launch.config),
                       description=f"{where}, DeepSpeed ZeRO-{stage}{f', {offload}' if offload else ''} "
                                   f"({Path(launch.config).name})",
                       notes=tuple(notes))
