"""Reference log-probs computed once per pair set and shared by the CogPO-family methods.

CogPO, DPO, beta-DPO and the ``cogpo_x<f>`` sweep all start from the same model on the same pairs, so the
reference log-probs of every pair (the starting model's summed log-probs of the chosen and the rejected
completion) are the same for all of them. The first CogPO-family trainer of a stage computes them with
TRL's own pass (``DPOTrainer`` with ``precompute_ref_log_probs``: the same tokenization, truncation and
batching as training); :class:`SharedRefLogps` takes them from its dataset, keeps them for the other
methods and writes ``05_preference/ref_logps.jsonl`` (one row per pair id, with the starting model's
fingerprint, a hash of the pair's texts and the settings the values depend on), so a rerun of the stage
reuses them. The later trainers get them as the dataset columns ``ref_chosen_logps`` /
``ref_rejected_logps`` with ``precompute_ref_log_probs`` on, and :class:`PrecomputesRefLogps` keeps those
columns where TRL would compute them again (and computes them without TRL's cache-file round trip, which
fails under several processes).

Pairs that TRL drops (a prompt that fills ``max_length``) have ``null`` values; any other missing or stale
row (another model, other settings, another text under the same id) makes the file unused and the values
computed again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from cogpo_kit.io import atomic_write_jsonl, iter_jsonl, stable_hash
from cogpo_kit.training.cogpo_trainer import CogPOTrainer
from cogpo_kit.training.common import is_main_process

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
"""The dataset columns TRL's DPO trainer reads precomputed reference log-probs from."""
ID_COLUMN = "pair_id"
"""The preference dataset's column with each pair's id."""


def pair_hash(pair: dict) -> str:
    """A short hash of what a pair's reference log-probs depend on in the pair: prompt, chosen, rejected."""
    return stable_hash([pair["prompt"], pair["chosen"], pair["rejected"]])[:16]


def ref_settings(args) -> dict:
    """The trainer settings the values depend on besides the model and the pair texts."""
    return {"max_length": args.max_length, "truncation_mode": args.truncation_mode,
            "dtype": "bfloat16" if getattr(args, "bf16", False) else "float32"}


class PrecomputesRefLogps:
    """Mixin for TRL's DPO-family trainers, for ``precompute_ref_log_probs``: a dataset that already has both
    reference columns is used as it is; otherwise the values are computed by TRL's own pass
    (``DPOTrainer._precompute_ref_logps``: the trainer's collator, ``compute_ref_log_probs`` per batch,
    ``gather_for_metrics`` over processes) but added to the dataset in memory. TRL's pass hands them from the
    main process to the others through a ``datasets`` cache file that, for an in-memory dataset, has a random
    name in each process, so under ``torchrun`` the other processes fail to open it."""

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        import torch
        from torch.utils.data import DataLoader

        columns = getattr(dataset, "column_names", None) or []
        if all(c in columns for c in REF_COLUMNS):
            return dataset
        if getattr(dataset, "cache_files", None) or not hasattr(dataset, "add_column"):
            return super()._precompute_ref_logps(dataset, name, batch_size)  # TRL's own file round trip works
        loader = self.accelerator.prepare(DataLoader(
            dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory))
        if self.ref_model is None and self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in loader:
            c, r = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
        values = {REF_COLUMNS[0]: torch.cat(chosen).tolist(), REF_COLUMNS[1]: torch.cat(rejected).tolist()}
        if len(values[REF_COLUMNS[0]]) != len(dataset):
            raise RuntimeError(f"reference log-probs of {name}: {len(values[REF_COLUMNS[0]])} values for "
                               f"{len(dataset)} rows")
        for column, vals in values.items():
            dataset = dataset.add_column(column, vals)
        return dataset


class PrecomputedRefCogPOTrainer(PrecomputesRefLogps, CogPOTrainer):
    """:class:`~cogpo_kit.training.cogpo_trainer.CogPOTrainer` with :class:`PrecomputesRefLogps`."""


@dataclass
class SharedRefLogps:
    """The reference log-probs of one pair set under one starting model, for every CogPO-family method."""

    path: Path
    """``05_preference/ref_logps.jsonl``."""
    model: str
    """Fingerprint of the starting model (:func:`cogpo_kit.models.adapters.model_fingerprint`)."""
    pairs: list[dict]
    """The pairs (``id``, ``prompt``, ``chosen``, ``rejected``)."""
    save: Optional[Callable[[list[dict]], Any]] = None
    """Writes the rows (the stage's schema-checked writer); ``None``: a plain JSONL write."""
    values: dict[str, tuple[Optional[float], Optional[float]]] = field(default_factory=dict)
    """Pair id -> (chosen, rejected) log-probs; ``None`` for pairs TRL drops."""
    settings: Optional[dict] = None
    """:func:`ref_settings` the values were computed with."""
    source: str = ""
    """``file`` (read from an earlier run), ``computed`` (by a trainer in this run) or empty (none yet)."""
    computed_by: Optional[str] = None
    """The method whose trainer computed them."""

    def ready(self, settings: dict) -> bool:
        """Whether values for every pair under ``settings`` are at hand (reading the file once if need be)."""
        if self.values and self.settings == settings:
            return True
        loaded = self._read(settings)
        if loaded is None:
            return False
        self.values, self.settings, self.source = loaded, settings, "file"
        return True

    def _read(self, settings: dict) -> Optional[dict]:
        if not self.path.is_file():
            return None
        want = {p["id"]: pair_hash(p) for p in self.pairs}
        found: dict[str, tuple[Optional[float], Optional[float]]] = {}
        try:
            for _line, row in iter_jsonl(self.path):
                if (row.get("model") != self.model or row.get("settings") != settings
                        or want.get(row.get("id")) != row.get("pair_hash")):
                    return None
                found[row["id"]] = (row.get(REF_COLUMNS[0]), row.get(REF_COLUMNS[1]))
        except (OSError, ValueError):
            return None
        return found if set(found) == set(want) else None

    def columns(self, ids: list[str]) -> dict[str, list[float]]:
        """The two reference columns for the dataset rows ``ids`` (NaN for pairs TRL drops)."""
        out = {c: [] for c in REF_COLUMNS}
        for pid in ids:
            chosen, rejected = self.values[pid]
            out[REF_COLUMNS[0]].append(math.nan if chosen is None else float(chosen))
            out[REF_COLUMNS[1]].append(math.nan if rejected is None else float(rejected))
        return out

    def take_from(self, trainer, settings: dict, method: str) -> None:
        """Keep the values TRL computed in ``trainer``'s dataset and write the file (main process)."""
        data = trainer.train_dataset
        missing = [c for c in (ID_COLUMN, *REF_COLUMNS) if c not in data.column_names]
        if missing:
            raise ValueError(f"{method}: the trainer's dataset has no {missing} column(s) after TRL's "
                             "precompute_ref_log_probs pass")
        ids = data[ID_COLUMN]
        got = dict(zip(ids, zip(data[REF_COLUMNS[0]], data[REF_COLUMNS[1]])))
        self.values = {p["id"]: got.get(p["id"], (None, None)) for p in self.pairs}
        self.settings, self.source, self.computed_by = settings, "computed", method
        if is_main_process():
            rows = [{"id": p["id"], REF_COLUMNS[0]: self.values[p["id"]][0], REF_COLUMNS[1]: self.values[p["id"]][1],
                     "model": self.model, "pair_hash": pair_hash(p), "settings": settings} for p in self.pairs]
            (self.save or (lambda r: atomic_write_jsonl(self.path, r)))(rows)

    def check_used(self, trainer, method: str) -> None:
        """Every pair the trainer kept has values (a NaN would mean a pair TRL kept but dropped before)."""
        data = trainer.train_dataset
        for pid, chosen, rejected in zip(data[ID_COLUMN], data[REF_COLUMNS[0]], data[REF_COLUMNS[1]]):
            if math.isnan(chosen) or math.isnan(rejected):
                raise ValueError(f"{method}: pair {pid!r} has no shared reference log-probs in {self.path} "
                                 "(TRL dropped it when they were computed); delete the file to compute them again")

    def record(self) -> dict:
        """What the manifest says about them."""
        return {"file": str(self.path), "model": self.model, "source": self.source, "computed_by": self.computed_by,
                "settings": self.settings, "pairs": sum(1 for v in self.values.values() if v[0] is not None)}
