"""The CRV system (paper section 3.2): Critic, Rethinker and Verifier agents, and incorrect CoTs.

Stages: :func:`cogpo_kit.crv.stage.run_critique` (01_critique) and
:func:`cogpo_kit.crv.stage.run_rethink` (02_rethink). Building blocks: :mod:`.prompts` (Table 13),
:mod:`.parse` (labels from free text), :mod:`.critic` (majority vote with early exit),
:mod:`.rethink` (the rewrite-verify-recritique loop, incorrect CoTs), :mod:`.scheduler` (streaming
through one running engine, or round-wide batches), :mod:`.funnel` (counts and costs),
:mod:`.studies` (Tables 1 and 5).
"""
