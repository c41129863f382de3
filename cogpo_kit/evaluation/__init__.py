"""Evaluation: benchmarks, graders, a code sandbox, metrics with intervals, stage 06, contamination.

- :mod:`benchmarks` / :mod:`benchmark_loaders` — the registry, the loaders of ``data/<name>/``, the
  paper's Table 7 sizes; :mod:`livecodebench` — the benchmark's release files (hidden tests) and the
  statements-only proxy ``livecodebench_public``;
- :mod:`protocol` — named decoding protocols (greedy, r1) recorded with every number;
- :mod:`grading` — ``grade(prediction, gold, kind)``, ``extract_answer``, the time-limited
  :class:`~cogpo_kit.evaluation.grading.MathGrader` (worker processes: :mod:`grader_pool`,
  :mod:`grader_worker`); the math path is :mod:`cogpo_kit.answers.extraction` -> :mod:`math_normalize` ->
  :mod:`math_equivalence` (math-verify underneath); letters: :mod:`choice`;
- :mod:`sandbox` and :mod:`code_tests` — running programs contained, per-test verdicts;
- :mod:`metrics`, :mod:`scoring`, :mod:`comparison` — pass@k, bootstrap intervals, paired tests with
  Holm's correction, answers cut at ``max_tokens``;
- :mod:`stage` — ``run_evaluate(params)``; :mod:`contamination` — n-gram overlap check.
"""
