"""The browsers built on a fake run (every artifact written by the kit's own writers) and driven through
their controls, as a user would."""

from __future__ import annotations

import html
import re

import pytest

from cogpo_kit.params import load_params
from cogpo_kit.viz.artifacts import Run
from cogpo_kit.viz.widgets import CoTComparison, PairBrowser, SampleBrowser


@pytest.fixture(scope="module")
def run(fake_run) -> Run:
    return Run.from_params(load_params([fake_run]))


def _shown_id(view) -> str:
    return re.search(r"<div><b>([^<]+)</b>", view.html.value).group(1)


def test_cot_comparison_navigation_and_filters(run):
    view = CoTComparison(run)
    ids = [r["id"] for r in run.critiques()]
    assert view.position.value == f"1 / {len(ids)}"
    assert _shown_id(view) == ids[0]
    assert view.prev_button.disabled and not view.next_button.disabled
    view.next_button.click()
    assert _shown_id(view) == ids[1] and view.position.value == f"2 / {len(ids)}"
    view.prev_button.click()
    assert _shown_id(view) == ids[0]

    hard = [r["id"] for r in run.critiques() if r["level"] == "hard"]
    view.level_filter.value = "hard"
    assert view.position.value == f"1 / {len(hard)}"
    seen = []
    for _ in hard:
        seen.append(_shown_id(view))
        assert "level <span class=\"ck-badge \">hard</span>" in view.html.value
        view.next_button.click()
    assert seen == hard
    assert view.next_button.disabled

    view.level_filter.value = "all"
    assert view.outcome_filter.options == ("all", "kept", "no rewrite (no_majority)", "verifier_no")
    kept = {r["id"] for r in run.sft()}
    failed = [r["id"] for r in run.rewrites() if r["kind"] != "corrupt" and r["id"] not in kept
              and r["outcome"] == "verifier_no"]
    view.outcome_filter.value = "verifier_no"
    assert view.position.value == f"1 / {len(set(failed))}"
    assert _shown_id(view) == failed[0]
    assert "not in D_SFT*" in view.html.value
    view.outcome_filter.value = "no rewrite (no_majority)"
    assert "level <span class=\"ck-badge \">no label</span>" in view.html.value

    view.outcome_filter.value = "all"
    view.select.value = ids.index(ids[5])  # pick an example from the list
    assert _shown_id(view) == ids[5] and view.position.value == f"6 / {len(ids)}"


def test_cot_comparison_shows_votes_verdicts_and_word_diff(run):
    view = CoTComparison(run)
    view.level_filter.value = "easy"
    view.outcome_filter.value = "kept"
    item = view.current
    shown = view.html.value
    for vote in run.critiques()[[r["id"] for r in run.critiques()].index(item["id"])]["votes"]:
        assert f'<span class="ck-badge ">{vote}</span>' in shown
    assert shown.count("Rewrite attempt") == len(item["attempts"])
    assert 'ck-badge ck-good">YES</span>' in shown  # the kept attempt's Verifier verdict
    assert 're-rated <span class="ck-badge ">medium</span>' in shown  # the Critic's re-rating
    assert '<span class="ck-add"> carefully</span>' in shown or '<span class="ck-add">carefully' in shown
    # both incorrect-CoT attempts: the first still reached the gold answer, the second is the usable one
    assert "Incorrect CoT attempt 1" in shown and "reaches_gold" in shown
    assert "Incorrect CoT attempt 2" in shown and 'ck-good">usable</span>' in shown
    gold = item["input"]["answer"]
    assert f'<span class="ck-del">{gold}.</span><span class="ck-add">{int(gold) + 1}.</span>' in shown
    # data is escaped, never injected as markup
    assert "&lt;b&gt;bold&lt;/b&gt;" in shown and "<b>bold</b>" not in shown


def test_cot_comparison_medium_and_empty_filter_result(run):
    view = CoTComparison(run)
    view.level_filter.value = "medium"
    assert "Verification attempt 0" in view.html.value and "the original CoT, checked as it is" in view.html.value
    view.outcome_filter.value = "verifier_no"  # medium CoTs all pass the Verifier in the fake run
    assert view.position.value == "0 / 0"
    assert "no example matches the filters" in view.html.value
    assert "level = medium, outcome = verifier_no" in view.html.value
    assert view.prev_button.disabled and view.next_button.disabled


def test_pair_browser(run):
    view = PairBrowser(run)
    pairs = run.pairs()
    assert view.gap_filter.options == ("all", "small", "medium", "large")
    view.gap_filter.value = "small"
    small = [p for p in pairs if p["gap"] == "small"]
    assert view.position.value == f"1 / {len(small)}"
    view.next_button.click()
    shown = view.html.value
    assert html.escape(small[1]["id"]) in shown
    assert 'gap <span class="ck-badge ">small</span>' in shown and 'β <span class="ck-badge ">0.1</span>' in shown
    assert f"Chosen · {html.escape(small[1]['chosen_kind'])}" in shown
    assert f"Rejected · {html.escape(small[1]['rejected_kind'])}" in shown  # the original CoT
    assert "ck-add" in shown  # each side's own words are highlighted
    view.gap_filter.value = "large"
    assert 'β <span class="ck-badge ">0.5</span>' in view.html.value


def test_sample_browser_filters(run):
    view = SampleBrowser(run)
    samples = run.samples()
    assert view.position.value == f"1 / {len(samples)}"
    view.benchmark_filter.value = "math500"
    view.model_filter.value = "cogpo"
    view.verdict_filter.value = "incorrect"
    wanted = [s for s in samples if s["benchmark"] == "math500" and s["model"] == "cogpo" and not s["correct"]]
    assert view.position.value == f"{1 if wanted else 0} / {len(wanted)}"
    for s in wanted:
        shown = view.html.value
        assert "<b>CogPO</b> on <b>MATH-500</b>" in shown and 'ck-bad">incorrect</span>' in shown
        assert f'extracted <span class="ck-badge ">{s["extracted"]}</span>' in shown
        assert f'gold <span class="ck-badge ">{s["gold"]}</span>' in shown
        assert "&lt;i&gt;hard&lt;/i&gt;" in shown
        view.next_button.click()
    view.verdict_filter.value = "correct"
    assert 'ck-good">correct</span>' in view.html.value
    assert view.model_filter.options[:4] == ("all", "zero_shot", "sft", "crv_sft")


def test_browsers_on_a_run_with_no_artifacts(tmp_path):
    run = Run(tmp_path / "nothing")
    for cls, message in ((CoTComparison, "no example matches"), (PairBrowser, "no pair matches"),
                         (SampleBrowser, "no sample matches")):
        view = cls(run)
        assert view.position.value == "0 / 0" and message in view.html.value
        view.next_button.click()  # nothing to move to: no error
        assert view.current is None


def test_browser_mimebundle_carries_static_html(run):
    view = PairBrowser(run)
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"] == view.html.value
