"""Several LoRA models on one base in memory: adapter chains as stacked low-rank updates, chosen per row.

A LoRA adapter adds ``scaling * B @ A`` to each weight it targets; an adapter chain (a preference adapter
trained on top of an SFT adapter, :func:`cogpo_kit.models.adapters.adapter_chain`) adds the sum of its links'
updates, and a sum of low-rank updates is one update of the summed rank: ``A`` stacked row-wise, ``B``
column-wise with each link's scaling folded in (:func:`fold_chain`). So the student and every adapter chain
on it are *one* base model plus a bank of low-rank updates.

:class:`LoraBank` holds every distinct adapter folder of a set of models once; :func:`install` wraps each
targeted ``nn.Linear`` of the base in a :class:`StackedLoraLinear` that adds, for every row of a batch, the
updates of that row's model only (a 0/1 mask over the stacked ranks: ``x @ A_all^T * mask @ B_all^T``, one
pair of small matrix products per layer whatever the number of models). Which model each row is goes in
:meth:`RowModels.select` before a forward pass (:meth:`RowModels.keep` drops rows, as finished rows leave a
batch); a row of the base model gets no update at all (its mask is all zero). The base weights are never
changed: the numbers differ from a model merged in bfloat16 only by rounding.

Only plain LoRA on ``nn.Linear`` layers is stacked; anything else (DoRA, LoRA biases, ``fan_in_fan_out``,
per-module rank or alpha patterns, ``modules_to_save``, embedding adapters) raises :class:`NotFoldable`
naming the folder and the reason, and such a model is served on its own, merged, as before.

Run the tests with ``.venv/bin/pytest -q tests/test_engines_hf_batching.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cogpo_kit.models.adapters import ADAPTER_CONFIG, _read_json, adapter_chain, follow_pointers, is_adapter_dir

PLAIN_LORA_OFF = {"use_dora": False, "lora_bias": False, "fan_in_fan_out": False}
"""Adapter config switches that must be off (or absent) for an adapter to be stacked."""
PLAIN_LORA_EMPTY = ("rank_pattern", "alpha_pattern", "modules_to_save", "target_parameters",
                    "trainable_token_indices", "layer_replication", "alora_invocation_tokens")
"""Adapter config entries that must be empty (or absent) for an adapter to be stacked."""
_PREFIX = "base_model.model."


class NotFoldable(ValueError):
    """An adapter (or model) the stacked path cannot serve; the message names the folder and why."""


@dataclass(frozen=True)
class LoraUpdate:
    """One module's low-rank update ``B @ A`` (scaling folded into ``B``)."""

    A: object
    """``[rank, in_features]`` tensor."""
    B: object
    """``[out_features, rank]`` tensor, already multiplied by the adapter's scaling."""


def _check_config(folder: Path, config: dict) -> float:
    """The adapter's scaling (``lora_alpha / r``, ``/ sqrt(r)`` with rsLoRA) once the config is plain LoRA."""
    if config.get("peft_type", "LORA") != "LORA":
        raise NotFoldable(f"{folder}: peft_type {config.get('peft_type')!r} is not LoRA")
    for key, off in PLAIN_LORA_OFF.items():
        if config.get(key, off) != off:
            raise NotFoldable(f"{folder}: {ADAPTER_CONFIG} sets {key}={config[key]!r}")
    for key in PLAIN_LORA_EMPTY:
        if config.get(key):
            raise NotFoldable(f"{folder}: {ADAPTER_CONFIG} sets {key}")
    if config.get("bias", "none") != "none":
        raise NotFoldable(f"{folder}: {ADAPTER_CONFIG} trains biases (bias={config['bias']!r})")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
        raise NotFoldable(f"{folder}: {ADAPTER_CONFIG} has no positive integer r and numeric lora_alpha")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def check_adapter(adapter_dir) -> float:
    """Raise :class:`NotFoldable` unless the adapter folder's config is plain LoRA; returns its scaling. Reads
    the config only (the weights are checked by :func:`read_lora`)."""
    folder = Path(adapter_dir)
    return _check_config(folder, _read_json(folder / ADAPTER_CONFIG))


def _load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    if (folder / "adapter_model.safetensors").is_file():
        return load_file(str(folder / "adapter_model.safetensors"))
    import torch

    return torch.load(str(folder / "adapter_model.bin"), map_location="cpu", weights_only=True)


def read_lora(adapter_dir, model) -> dict[str, LoraUpdate]:
    """``{module name: LoraUpdate}`` of one adapter folder on ``model`` (the base it was trained on, or one with
    the same module names and shapes); tensors in the model's dtype and device. :class:`NotFoldable` when the
    adapter is not plain LoRA on ``nn.Linear`` layers of ``model``."""
    import torch

    folder = Path(adapter_dir)
    scaling = check_adapter(folder)
    tensors = _load_weights(folder)
    modules = dict(model.named_modules())
    param = next(model.parameters())
    pairs: dict[str, dict[str, object]] = {}
    for key, value in tensors.items():
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[:-len(suffix)], {})[part] = value
                break
        else:
            raise NotFoldable(f"{folder}: weight {key} is not a LoRA A or B matrix")
    out = {}
    for name, ab in sorted(pairs.items()):
        mod = modules.get(name)
        if not isinstance(mod, torch.nn.Linear):
            raise NotFoldable(f"{folder}: LoRA target {name} is not a Linear layer of the base model")
        if set(ab) != {"A", "B"}:
            raise NotFoldable(f"{folder}: LoRA target {name} lacks its {'B' if 'A' in ab else 'A'} matrix")
        a, b = ab["A"], ab["B"]
        if a.shape[1] != mod.in_features or b.shape[0] != mod.out_features or a.shape[0] != b.shape[1]:
            raise NotFoldable(f"{folder}: LoRA target {name}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit "
                              f"a {mod.in_features} -> {mod.out_features} layer")
        out[name] = LoraUpdate(A=a.to(device=param.device, dtype=param.dtype),
                               B=(b.float() * scaling).to(device=param.device, dtype=param.dtype))
    if not out:
        raise NotFoldable(f"{folder}: no LoRA weights")
    return out


def fold_chain(updates: Sequence[dict[str, LoraUpdate]]) -> dict[str, LoraUpdate]:
    """One update per module for a chain of adapters: ``sum_k B_k @ A_k`` as ``[B_1 .. B_n] @ [A_1; ..; A_n]``."""
    import torch

    names = sorted({n for u in updates for n in u})
    out = {}
    for n in names:
        links = [u[n] for u in updates if n in u]
        out[n] = LoraUpdate(A=torch.cat([lk.A for lk in links], 0), B=torch.cat([lk.B for lk in links], 1))
    return out


def base_of(spec: str) -> tuple[str, list[str]]:
    """``(plain base spec, adapter folders in order)`` of a model spec (pointer folders followed)."""
    chain = adapter_chain(follow_pointers(spec))
    return chain[0], [c for c in chain[1:] if is_adapter_dir(c)]


class RowModels:
    """Which model each row of the next forward passes is (shared by every :class:`StackedLoraLinear`)."""

    def __init__(self, masks):
        self.masks = masks
        """``[n_models, R]`` 0/1 tensor: the stacked ranks of each model."""
        self.rows = None
        """``[batch, 1, R]`` mask of the current rows, or ``None``: no update (base model rows only)."""

    def select(self, models: Optional[Sequence[int]]) -> None:
        """Rows ``i`` are model ``models[i]`` (an index into the bank's models); ``None``: the base model."""
        import torch

        if models is None or not any(self.masks[m].any() for m in set(models)):
            self.rows = None
            return
        self.rows = self.masks[torch.as_tensor(list(models), dtype=torch.long, device=self.masks.device)][:, None, :]

    def keep(self, index) -> None:
        """Keep only the rows at ``index`` (a 1-D tensor of row positions), in that order."""
        if self.rows is not None:
            self.rows = self.rows[index.to(self.rows.device)]


def _stacked_linear_cls():
    import torch

    class StackedLoraLinear(torch.nn.Module):
        """A base ``nn.Linear`` plus the stacked low-rank updates of several models, each row getting its own.

        The base weight and the stacked ``A`` are one ``[out + R, in]`` matrix (the base layer's weight is a view
        of its first ``out`` rows, no copy), so one matrix product gives the base output and ``x @ A^T``; the
        masked ``(x @ A^T) @ B^T`` is then added in place."""

        def __init__(self, base: torch.nn.Linear, A, B, rows: RowModels):
            super().__init__()
            self.base = base
            self.out = base.out_features
            W = torch.cat([base.weight.detach(), A.to(base.weight.dtype)], 0)
            base.weight = torch.nn.Parameter(W[:self.out], requires_grad=False)
            self.register_buffer("W", W, persistent=False)  # [out + R, in]
            self.register_buffer("B", B, persistent=False)  # [out, R]
            self.row_models = rows

        def forward(self, x):
            rows = self.row_models.rows
            if rows is None:
                return self.base(x)
            z = torch.nn.functional.linear(x, self.W)
            y, t = z[..., :self.out], z[..., self.out:] * rows.to(z.dtype)
            y.view(-1, self.out).addmm_(t.reshape(-1, t.shape[-1]), self.B.t())  # in place, into z
            if self.base.bias is not None:
                y.add_(self.base.bias)
            return y

    return StackedLoraLinear


class LoraBank:
    """The models of one base as stacked LoRA updates: every distinct adapter read once (by content: the same
    adapter in two folders is one).

    ``models[k]`` is a list of adapter folders (empty: the base itself); model ``k``'s rows get the updates of
    exactly its folders (its chain folded, :func:`fold_chain`, by the mask of :class:`RowModels`).
    """

    def __init__(self, model, models: Sequence[Sequence[str]]):
        import torch

        from cogpo_kit.models.adapters import model_fingerprint

        where = {}
        self.models = []
        for m in models:
            prints = [model_fingerprint(f) for f in m]
            for f, fp in zip(m, prints):
                where.setdefault(fp, str(Path(f).resolve()))
            self.models.append(prints)
        self.folders = list(where)
        """The distinct adapters (content fingerprints), in stacking order."""
        updates = [read_lora(where[fp], model) for fp in self.folders]
        self.ranks: list[dict[str, int]] = [{n: int(u.A.shape[0]) for n, u in up.items()} for up in updates]
        self.targets = sorted({n for up in updates for n in up})
        # every folder gets the same rank slots in every module (its largest rank; zero rows where it has none)
        widths = [max(r.values()) for r in self.ranks]
        starts = [sum(widths[:k]) for k in range(len(widths))]
        total = sum(widths)
        mods = dict(model.named_modules())
        param = next(model.parameters())
        self.stacks: dict[str, tuple[object, object]] = {}
        for name in self.targets:
            lin = mods[name]
            A = torch.zeros(total, lin.in_features, dtype=param.dtype, device=param.device)
            B = torch.zeros(lin.out_features, total, dtype=param.dtype, device=param.device)
            for k, up in enumerate(updates):
                if name in up:
                    r = up[name].A.shape[0]
                    A[starts[k]:starts[k] + r] = up[name].A
                    B[:, starts[k]:starts[k] + r] = up[name].B
            self.stacks[name] = (A, B)
        masks = torch.zeros(len(self.models), total, dtype=param.dtype, device=param.device)
        for m, folders in enumerate(self.models):
            for f in folders:
                k = self.folders.index(f)
                masks[m, starts[k]:starts[k] + widths[k]] = 1
        self.row_models = RowModels(masks)

    def update_of(self, k: int) -> dict[str, LoraUpdate]:
        """Model ``k``'s folded update per module (for checks: ``B @ A`` is what its rows get)."""
        import torch

        out = {}
        for name, (A, B) in self.stacks.items():
            sel = self.row_models.masks[k].bool()
            if sel.any() and bool(torch.count_nonzero(A[sel])):
                out[name] = LoraUpdate(A=A[sel], B=B[:, sel])
        return out


def install(model, bank: LoraBank) -> RowModels:
    """Wrap each module the bank targets in a :class:`StackedLoraLinear` (in place); returns the row selector.
    :func:`uninstall` puts the plain layers back."""
    cls = _stacked_linear_cls()
    mods = dict(model.named_modules())
    for name in bank.targets:
        parent_name, _, child = name.rpartition(".")
        parent = mods[parent_name] if parent_name else model
        A, B = bank.stacks[name]
        setattr(parent, child, cls(mods[name], A, B, bank.row_models))
    return bank.row_models


def uninstall(model) -> None:
    """Put the plain ``nn.Linear`` layers back where :func:`install` wrapped them."""
    import torch

    cls_name = "StackedLoraLinear"
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child).__name__ == cls_name:
                base = child.base
                base.weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)
                setattr(mod, child_name, base)
