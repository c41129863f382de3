"""Answers: the one home of the response shape and of final-answer extraction.

- :mod:`cogpo_kit.answers.extraction`: the final answer a text reaches (evaluation and CRV alike);
- :mod:`cogpo_kit.answers.response`: the student's prompt and the response every training row ends with.

Import from the submodules (this package imports nothing, so the grader can use the extractor
without loading the rest).
"""
