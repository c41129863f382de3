"""Interactive browsers (ipywidgets) over a run: CoT versions, preference pairs, evaluation samples.

Each browser is a ``VBox`` whose controls are attributes, so code can drive it as a user would::

    view = CoTComparison(run)
    view.level_filter.value = "easy"
    view.next_button.click()
    view.html.value            # the HTML now shown

A browser takes a :class:`~cogpo_kit.viz.artifacts.Run`, a ``RunParams`` or a run folder.
"""

from __future__ import annotations

import html
import os
from typing import Any, Callable

import ipywidgets as W

from cogpo_kit.viz.artifacts import (GAPS, INCORRECT_KIND, LEVELS, Run, bench_label, level_of, model_label, model_order,
                                     prompt_text, rerating_of, text_of, verdict_of)
from cogpo_kit.viz.diff import CSS, diff_html, diff_stats

ALL = "all"


def as_run(obj: Any) -> Run:
    if isinstance(obj, Run):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return Run(obj)
    return Run.from_params(obj)


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _badge(text: Any, kind: str = "") -> str:
    return f'<span class="ck-badge {kind}">{_e(text)}</span>'


def _col(title: str, body_html: str, meta: str = "") -> str:
    return (f'<div class="ck-col"><h4>{title}</h4>{f"<div class=ck-meta>{meta}</div>" if meta else ""}'
            f'<div class="ck-text">{body_html}</div></div>')


def _verdict_kind(v: Any) -> str:
    s = str(v).strip().upper()
    return "ck-good" if s in ("YES", "TRUE", "CORRECT") else "ck-bad" if s in ("NO", "FALSE", "INCORRECT") else "ck-warn"


class _Browser(W.VBox):
    """Items, dropdown filters, prev/next buttons, an item selector and the HTML of the current item."""

    def __init__(self, items: list[dict], filters: dict[str, tuple[str, Callable[[dict], Any], tuple[str, ...]]], *,
                 label: Callable[[dict], str], empty: str):
        self.items = items
        self._filters = filters
        self._label = label
        self._empty = empty
        self._updating = False
        self.filtered: list[int] = list(range(len(items)))
        self.index = 0
        self.prev_button = W.Button(description="◀ prev", layout=W.Layout(width="90px"))
        self.next_button = W.Button(description="next ▶", layout=W.Layout(width="90px"))
        self.position = W.Label()
        self.select = W.Dropdown(description="item", layout=W.Layout(width="340px"))
        self.html = W.HTML()
        self.filter_widgets: dict[str, W.Dropdown] = {}
        for attr, (desc, key, order) in filters.items():
            values = sorted({str(key(it)) for it in items},
                            key=lambda v: (order.index(v) if v in order else len(order), v))
            dd = W.Dropdown(options=[ALL] + values, value=ALL, description=desc, layout=W.Layout(width="240px"))
            dd.observe(self._on_filter, names="value")
            setattr(self, attr, dd)
            self.filter_widgets[attr] = dd
        self.prev_button.on_click(lambda _: self.go(self.index - 1))
        self.next_button.on_click(lambda _: self.go(self.index + 1))
        self.select.observe(self._on_select, names="value")
        bar = W.HBox([self.prev_button, self.next_button, self.position, self.select])
        super().__init__([W.HBox(list(self.filter_widgets.values())), bar, self.html])
        self._apply_filters()

    # --- state -----------------------------------------------------------------------------
    @property
    def current(self) -> dict | None:
        return self.items[self.filtered[self.index]] if self.filtered else None

    def go(self, position: int) -> None:
        if not self.filtered:
            return
        self.index = max(0, min(position, len(self.filtered) - 1))
        self._updating = True
        try:
            self.select.value = self.filtered[self.index]
        finally:
            self._updating = False
        self._render()

    def _apply_filters(self) -> None:
        chosen = {attr: dd.value for attr, dd in self.filter_widgets.items()}
        self.filtered = [i for i, it in enumerate(self.items)
                         if all(v == ALL or str(self._filters[a][1](it)) == v for a, v in chosen.items())]
        self.index = 0
        self._updating = True
        try:
            self.select.options = [(self._label(self.items[i]), i) for i in self.filtered]
            self.select.value = self.filtered[0] if self.filtered else None
        finally:
            self._updating = False
        self._render()

    def _on_filter(self, _change) -> None:
        self._apply_filters()

    def _on_select(self, change) -> None:
        if self._updating or change["new"] is None:
            return
        self.index = self.filtered.index(change["new"])
        self._render()

    def _render(self) -> None:
        n = len(self.filtered)
        self.position.value = f"{self.index + 1} / {n}" if n else "0 / 0"
        self.prev_button.disabled = self.index <= 0
        self.next_button.disabled = self.index >= n - 1
        if not n:
            active = ", ".join(f"{self._filters[a][0]} = {dd.value}" for a, dd in self.filter_widgets.items()
                               if dd.value != ALL)
            body = f'<p class="ck-empty">{_e(self._empty)}{" (" + _e(active) + ")" if active else ""}</p>'
        else:
            body = self.render_item(self.current)
        self.html.value = f'<style>{CSS}</style><div class="ck-view">{body}</div>'

    def render_item(self, item: dict) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        """The live widget, plus the current item as HTML for viewers without a widget manager
        (an executed notebook exported to HTML, a code host, nbviewer)."""
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.html.value
        return bundle


def cot_items(run: Run) -> list[dict]:
    """One item per example: its input row, critique, rewrite attempts, incorrect-CoT attempts (or the kept
    incorrect CoT), D_SFT* row, and its outcome (``kept`` when in D_SFT*, else its last attempt's outcome)."""
    inputs = {r["id"]: r for r in run.inputs()}
    crits = {r["id"]: r for r in run.critiques()}
    attempts: dict[str, list[dict]] = {}
    corrupt: dict[str, list[dict]] = {}
    for r in run.rewrites():
        (corrupt if r["kind"] == INCORRECT_KIND else attempts).setdefault(r["id"], []).append(r)
    incorrect: dict[str, list[dict]] = {}
    for r in run.incorrect():
        incorrect.setdefault(r["id"], []).append(r)
    sft = {r["id"]: r for r in run.sft()}
    items = []
    for rid in dict.fromkeys([*crits, *inputs]):
        mine = sorted(attempts.get(rid, []), key=lambda r: r["attempt"])
        crit = crits.get(rid, {})
        outcome = ("kept" if rid in sft else mine[-1]["outcome"] if mine
                   else f"no rewrite ({crit['reason']})" if crit.get("reason") else "no rewrite")
        items.append({"id": rid, "input": inputs.get(rid, {}), "critique": crit, "level": level_of(crit.get("level")),
                      "attempts": mine, "sft": sft.get(rid), "outcome": outcome,
                      "corrupt": sorted(corrupt.get(rid, []), key=lambda r: r["attempt"]),
                      "incorrect": incorrect.get(rid, [])})
    return items


class CoTComparison(_Browser):
    """One example at a time: the original CoT, each rewrite attempt and the incorrect version side by side
    (words changed against the original highlighted), the Critic's votes, the Verifier's verdicts and the outcome."""

    def __init__(self, run: Any):
        self.run = as_run(run)
        super().__init__(cot_items(self.run),
                         {"level_filter": ("level", lambda it: it["level"], LEVELS),
                          "outcome_filter": ("outcome", lambda it: it["outcome"], ("kept", "retry", "discarded"))},
                         label=lambda it: f"{it['id']} · {it['level']} · {it['outcome']}",
                         empty="no example matches the filters")

    def render_item(self, it: dict) -> str:
        return cot_html(it)


def cot_html(it: dict) -> str:
    """HTML of one CoT comparison item (see :func:`cot_items`)."""
    inp, crit = it["input"], it["critique"]
    original = text_of(inp.get("reasoning"))
    votes = "".join(_badge(v) for v in crit.get("votes") or []) or '<span class="ck-empty">none</span>'
    sft = it["sft"]
    outcome = _badge(it["outcome"], "ck-good" if it["outcome"] == "kept" else "ck-warn")
    head = (f"<div><b>{_e(it['id'])}</b> · level {_badge(it['level'])} · Critic votes {votes}"
            f" · re-asked {_e(crit.get('reasks', 0))} · outcome {outcome}"
            f" · {'in D_SFT* as ' + _badge(sft.get('origin')) if sft else 'not in D_SFT*'}</div>"
            f"<div class='ck-meta'><b>Problem:</b> {_e(inp.get('problem'))}<br>"
            f"<b>Gold answer:</b> {_e(inp.get('answer'))}</div>")
    cols = [_col("Original CoT", _e(original) if original else '<span class="ck-empty">no original CoT</span>',
                 f"{len(original.split())} words")]
    for a in it["attempts"]:
        text = a.get("rewrite") or ""
        verdict = (f"Verifier {_badge(verdict_of(a), _verdict_kind(verdict_of(a)))} "
                   if verdict_of(a) is not None else "")
        meta = (f"{verdict}re-rated {_badge(rerating_of(a) or '–')} outcome {_badge(a['outcome'])}")
        if not text:
            body = ('<span class="ck-empty">the original CoT, checked as it is</span>' if a["kind"] == "medium"
                    else '<span class="ck-empty">no rewrite text</span>')
            cols.append(_col(f"{'Verification' if a['kind'] == 'medium' else 'Rewrite'} attempt "
                             f"{_e(a.get('attempt'))}", body, meta))
            continue
        st = diff_stats(original, text)
        meta += f"<br>{len(text.split())} words, +{st['added']} / −{st['removed']} vs original"
        if a.get("reached_answer") is not None:
            meta += f", reaches {_badge(a.get('reached_answer'))}"
        cols.append(_col(f"Rewrite attempt {_e(a.get('attempt'))}", diff_html(original, text), meta))
    kept_incorrect = {r["reasoning"] for r in it["incorrect"]}
    for a in it["corrupt"]:
        text = a.get("rewrite") or ""
        meta = f"reaches {_badge(a.get('reached_answer') or 'no answer')} outcome {_badge(a['outcome'])}"
        if text in kept_incorrect:
            meta += " " + _badge("usable", "ck-good")
        cols.append(_col(f"Incorrect CoT attempt {_e(a.get('attempt'))}",
                         diff_html(original, text) if text else '<span class="ck-empty">no text</span>', meta))
    for r in ([] if it["corrupt"] else it["incorrect"]):  # every incorrect CoT written is usable
        meta = f"reaches {_badge(r['reached_answer'])} {_badge('usable', 'ck-good')}"
        cols.append(_col("Incorrect CoT", diff_html(original, r["reasoning"]), meta))
    if not it["attempts"] and not it["corrupt"] and not it["incorrect"]:
        cols.append(_col("Rewrites", '<span class="ck-empty">no rewrite or incorrect version for this example</span>'))
    return head + f'<div class="ck-cols">{"".join(cols)}</div>'


class PairBrowser(_Browser):
    """Preference pairs: the prompt, chosen vs rejected (each side's own words highlighted), gap, beta, kinds."""

    def __init__(self, run: Any):
        self.run = as_run(run)
        super().__init__(list(self.run.pairs()), {"gap_filter": ("gap", lambda p: p["gap"], GAPS)},
                         label=lambda p: f"{p['id']} · {p['gap']}", empty="no pair matches the filter")

    def render_item(self, p: dict) -> str:
        return pair_html(p)


def pair_html(p: dict) -> str:
    """HTML of one preference pair: chosen and rejected side by side, each side's own words highlighted."""
    chosen, rejected = text_of(p["chosen"]), text_of(p["rejected"])
    head = (f"<div><b>{_e(p['id'])}</b> · gap {_badge(p['gap'])} · β {_badge(p['beta'])}"
            f" · from example {_e(p.get('source_id'))}</div>"
            f"<div class='ck-meta'><b>Prompt:</b> {_e(prompt_text(p.get('prompt')))}</div>")
    cols = [_col(f"Chosen · {_e(p.get('chosen_kind'))}", diff_html(rejected, chosen, show_removed=False),
                 f"{len(chosen.split())} words"),
            _col(f"Rejected · {_e(p.get('rejected_kind'))}", diff_html(chosen, rejected, show_removed=False),
                 f"{len(rejected.split())} words")]
    return head + f'<div class="ck-cols">{"".join(cols)}</div>'


class SampleBrowser(_Browser):
    """Evaluation samples: output, extracted answer, gold answer and verdict, by benchmark, model and verdict."""

    def __init__(self, run: Any):
        self.run = as_run(run)
        order = {m: i for i, m in enumerate(model_order(s["model"] for s in self.run.samples()))}
        items = sorted(self.run.samples(), key=lambda s: (s["benchmark"], order[s["model"]]))
        super().__init__(items,
                         {"benchmark_filter": ("benchmark", lambda s: s["benchmark"], ()),
                          "model_filter": ("model", lambda s: s["model"], tuple(order)),
                          "verdict_filter": ("verdict", lambda s: "correct" if s["correct"] else "incorrect",
                                             ("correct", "incorrect"))},
                         label=lambda s: f"{s['model']} · {s['benchmark']} · {s.get('id')}",
                         empty="no sample matches the filters")

    def render_item(self, s: dict) -> str:
        return sample_html(s)


def sample_html(s: dict) -> str:
    """HTML of one evaluation sample."""
    ok = s["correct"]
    head = (f"<div><b>{_e(model_label(s['model']))}</b> on <b>{_e(bench_label(s['benchmark']))}</b>"
            f" · {_e(s.get('id'))} · {_badge('correct' if ok else 'incorrect', 'ck-good' if ok else 'ck-bad')}"
            f" · extracted {_badge(s.get('extracted') if s.get('extracted') is not None else 'none')}"
            f" · gold {_badge(s.get('gold'))}</div>")
    cols = [_col("Prompt", _e(prompt_text(s.get("prompt")))), _col("Output", _e(text_of(s.get("output"))))]
    return head + f'<div class="ck-cols">{"".join(cols)}</div>'
