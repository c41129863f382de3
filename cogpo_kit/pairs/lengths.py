"""Token lengths of pairs with the training tokenizer and chat template, and the over-length policy.

A side's length is what the trainer sees: the chat template applied to the prompt plus that response.
Pairs longer than ``max_length`` on either side are dropped or have their responses cut to fit
(``overlength: drop | truncate``); either way they are counted and listed in the report.
"""

from __future__ import annotations

import statistics
from typing import Sequence


def _render(tok, conversations: Sequence[list], *, generation_prompt: bool) -> list[int]:
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=generation_prompt) for c in conversations]
    if not texts:
        return []
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def side_lengths(tok, prompts: Sequence[list], responses: Sequence[str]) -> list[int]:
    """Tokens of prompt + response for each (prompt, response) under the chat template."""
    return _render(tok, [list(p) + [{"role": "assistant", "content": r}] for p, r in zip(prompts, responses)],
                   generation_prompt=False)


def _stats(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "min": ordered[0], "mean": round(statistics.fmean(values), 1),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}


def _cut(tok, text: str, n_remove: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - n_remove)
    return tok.decode(ids[:keep], skip_special_tokens=False).rstrip()


def fit_lengths(pairs: list[dict], tok, max_length: int, policy: str) -> tuple[list[dict], dict]:
    """Add ``prompt_tokens``, ``chosen_tokens``, ``rejected_tokens`` to each pair and apply the policy.

    Returns the pairs kept (truncated ones marked ``truncated: true`` with their original lengths) and
    a report: length statistics before the policy, the over-length pairs by id and what happened to them.
    """
    if policy not in ("drop", "truncate"):
        raise ValueError(f"overlength policy must be 'drop' or 'truncate', got {policy!r}")
    prompts = [p["prompt"] for p in pairs]
    prompt_len = _render(tok, prompts, generation_prompt=True)
    chosen_len = side_lengths(tok, prompts, [p["chosen"] for p in pairs])
    rejected_len = side_lengths(tok, prompts, [p["rejected"] for p in pairs])
    kept, over, dropped_ids, truncated_ids = [], 0, [], []
    for pair, lp, lc, lr in zip(pairs, prompt_len, chosen_len, rejected_len):
        pair = dict(pair, prompt_tokens=lp, chosen_tokens=lc, rejected_tokens=lr)
        if lc <= max_length and lr <= max_length:
            kept.append(pair)
            continue
        over += 1
        # The prompt with the assistant header and end-of-turn tokens must leave room for a response.
        if policy == "drop" or lp + 8 >= max_length:
            dropped_ids.append(pair["id"])
            continue
        pair["original_chosen_tokens"], pair["original_rejected_tokens"] = lc, lr
        for side, length in (("chosen", lc), ("rejected", lr)):
            excess = length - max_length
            if excess > 0:
                pair[side] = _cut(tok, pair[side], excess + 2)
        pair["chosen_tokens"], pair["rejected_tokens"] = (
            side_lengths(tok, [pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]]))
        if pair["chosen_tokens"] > max_length or pair["rejected_tokens"] > max_length or not (
                pair["chosen"].strip() and pair["rejected"].strip()):
            dropped_ids.append(pair["id"])
            continue
        pair["truncated"] = True
        truncated_ids.append(pair["id"])
        kept.append(pair)
    report = {
        "max_length": max_length,
        "policy": policy,
        "prompt_tokens": _stats(prompt_len),
        "chosen_tokens": _stats(chosen_len),
        "rejected_tokens": _stats(rejected_len),
        "overlength_pairs": over,
        "dropped": len(dropped_ids),
        "truncated": len(truncated_ids),
        "dropped_ids": dropped_ids,
        "truncated_ids": truncated_ids,
    }
    return kept, report
