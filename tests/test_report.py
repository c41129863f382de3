"""The run report: one self-contained HTML file, notes for empty or skewed stages, and a real browser
(headless Chromium) rendering it with every figure and no console errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from cogpo_kit.params import load_params
from cogpo_kit.pipeline.stage import read_manifest, run_dir
from cogpo_kit.pipeline.stages import artifact_path, stage_dir_name
from cogpo_kit.viz import figures
from cogpo_kit.viz.report import run_report
from fake_run import make_fake_run

PLOTLY_BANNER = re.compile(r"\* plotly\.js v\d")
TEST_OUTPUTS = Path(os.environ.get("COGPO_TEST_OUTPUTS", Path(__file__).resolve().parents[1] / "outputs" / "test-artifacts"))
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    params = load_params([make_fake_run(root)])
    manifest = run_report(params)
    assert manifest["report"] == str(artifact_path(run_dir(params), "report"))
    return Path(manifest["report"])


def test_report_is_self_contained(full_report):
    text = full_report.read_text(encoding="utf-8")
    assert len(PLOTLY_BANNER.findall(text)) == 1 and text.count(get_plotlyjs()) == 1  # plotly.js inlined once
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.findall(r"https?://", text.replace(get_plotlyjs(), ""))  # nothing fetched from the network
    assert text.count('class="plotly-graph-div"') == len(figures.FIGURES)
    for heading in ("Summary", "Settings", "Critique", "CRV funnel", "Preference pairs", "Training", "Evaluation"):
        assert heading in text
    assert "1 of 13 CoTs got no Critic label (no majority or no valid vote)." in text  # a stage's own note
    assert "scored on 4 problems" in text  # a note derived from the artifacts
    assert "<b>" in text and "pass@1 in %" in text  # the Table 2 style results
    assert re.search(rf"<td>{stage_dir_name('report')}</td>\s*<td>running \(writes this report\)</td>", text)
    assert "not run" not in text


def test_report_writes_figures_and_manifest(full_report):
    folder = full_report.parent / "figures"
    html = sorted(p.stem for p in folder.glob("*.html"))
    assert html == sorted(figures.FIGURES) and (folder / "plotly.min.js").exists()
    manifest = read_manifest(full_report.parents[1], "report")
    assert manifest["counts"]["figures"] == len(figures.FIGURES) and manifest["counts"]["empty_figures"] == 0
    assert len(manifest["inputs"]) == 6  # the manifests of the six stages before it


def test_report_on_partial_skewed_run(tmp_path):
    yaml_path = make_fake_run(tmp_path, levels=["easy"] * 5, stages=["critique"], sweep=())
    manifest = run_report(load_params([yaml_path]))
    text = Path(manifest["report"]).read_text(encoding="utf-8")
    for stage in ("rethink", "evaluate"):
        assert f"stage {stage_dir_name(stage)} has not run" in text
    assert "skewed ratings: the Critic rated 5 of 5 CoTs easy" in text  # the stage's own note, not repeated
    assert "no medium CoTs" in text and "no hard CoTs" in text
    assert "no preference pairs in this run" in text and "no beta sweep in this run" in text
    assert text.count('class="plotly-graph-div"') == 2  # levels, and the funnel as far as it goes
    assert "(rethink not run yet)" in text
    assert manifest["counts"]["empty_figures"] == len(figures.FIGURES) - 2


def test_report_on_empty_run(tmp_path):
    params = load_params([make_fake_run(tmp_path, stages=())])
    text = Path(run_report(params)["report"]).read_text(encoding="utf-8")
    assert "no critiques in this run" in text and f"stage {stage_dir_name('critique')} has not run" in text


@pytest.mark.slow
def test_png_export_offline(tmp_path):
    reason = figures.png_exporter()
    if reason:
        pytest.skip(reason)
    from cogpo_kit.viz.artifacts import Run

    run = Run(run_dir(load_params([make_fake_run(tmp_path, stages=["critique"])])))
    saved = figures.save_figures({"level_distribution": figures.level_distribution(run)}, tmp_path / "figs")
    assert saved["notes"] == []
    png = Path(saved["png"][0]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    url = full_report.resolve().as_uri()
    res = _chromium("--dump-dom", url, profile=tmp_path / "profile1")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "<h1>cogpo-kit run report</h1>" in dom
    rendered = re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom)  # plotly.js drew into the div
    assert len(rendered) == len(figures.FIGURES)
    assert dom.count('class="main-svg"') >= len(figures.FIGURES)
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    errors = [ln for ln in console if re.search(r"uncaught|error", ln, re.I)]
    assert not errors, "\n".join(errors)

    TEST_OUTPUTS.mkdir(parents=True, exist_ok=True)
    shot = TEST_OUTPUTS / "report_screenshot.png"
    shot.unlink(missing_ok=True)
    res = _chromium("--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2000", url,
                    profile=tmp_path / "profile2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
