"""The CRV agents' prompts: the paper's Table 13 system prompts and the user messages.

Each agent gets the paper's system prompt (overridable per agent in params) and a user message
holding the problem, its gold answer and the reasoning process to judge or rewrite. The
``student_solve`` Verifier mode asks the student to follow a reasoning process; its user message
holds no answer (the student must reach it).
"""

from __future__ import annotations

import string
from typing import Optional

from cogpo_kit.levels import LEVELS

CRITIC = """You are a highly capable evaluator.
Your task is to assess the given reasoning process from the perspective of a small language model (e.g., 7B).
Specifically, determine whether the reasoning process provides sufficient detail for a small model to solve the problem, or whether it is too terse (i.e., lacking critical details) or too complex (i.e., containing unnecessary or confusing steps).
Complexity Definitions (from the perspective of a small model):
- Easy: The reasoning process is overly terse; it omits essential details that a small model needs to solve the problem.
- Medium: The reasoning process is appropriately balanced, offering enough detailed guidance.
- Hard: The reasoning process is overly complex, with extraneous or convoluted steps that could hinder a small model to follow it.
Output Format:
You must output exactly one word: easy, medium, or hard."""

RETHINKER_EASY = """You are a helpful assistant who is highly skilled at extending reasoning processes.
Given a problem ,its correct answer and its terse reasoning process, your task is to extend the reasoning process by adding necessary details and intermediate steps so that a small language model (e.g., a 7B model) can follow the extended reasoning process to solve the problem.
You should add necessary steps and details based on the correct answer.
You must output ONLY the extended reasoning process with no additional explanation or commentary."""

RETHINKER_HARD = """You are a helpful assistant who is highly skilled at simplifying reasoning processes.
Given a problem, its correct answer and its overly complex reasoning process, your task is to simplify the reasoning process so that a small language model (e.g., a 7B model) can reliably follow the steps to solve the problem.
You should remove redundancies or use simpler method on the basis of correct answer.
You must output ONLY the simplified reasoning process with no additional explanation or commentary."""

VERIFIER = """You are a highly capable Verifier.
Your task is to assess a given reasoning process based on a problem and its correct answer.
Specifically, determine whether the reasoning process is sufficient and accurate for you to reach the correct answer.
If the reasoning process correctly guides you to derive the the correct answer, output YES.
If the reasoning process fails to guide you to the correct answer, output NO.
You must output exactly one word: YES or NO."""

RETHINKER_INCORRECT = """You are an assistant who is skilled at converting correct reasoning processes to incorrect reasoning processes. Given a problem, its answer and its correct reasoning process, your task is to corrupt the correct reasoning process by introducing logical fallacies and misleading steps, so that a small language model (e.g., a 7B model) cannot follow the incorrect reasoning process to solve the problem.
You must output ONLY the incorrect reasoning process with no additional explanation or commentary."""

STUDENT_SOLVE = """Solve the problem by following the given reasoning process step by step.
Put your final answer within \\boxed{}."""

SYSTEM_PROMPTS = {
    "critic": CRITIC,
    "expand": RETHINKER_EASY,
    "simplify": RETHINKER_HARD,
    "verifier": VERIFIER,
    "corrupt": RETHINKER_INCORRECT,
    "student": STUDENT_SOLVE,
}
"""Default system prompt per role (Table 13; ``student`` is the kit's ``student_solve`` prompt)."""

USER_TEMPLATE = "Problem:\n{problem}\n\nCorrect answer:\n{answer}\n\nReasoning process:\n{reasoning}"
"""User message of the Critic, the Rethinkers and the Verifier."""

USER_TEMPLATES = {
    "critic": USER_TEMPLATE,
    "expand": USER_TEMPLATE,
    "simplify": USER_TEMPLATE,
    "verifier": USER_TEMPLATE,
    "corrupt": "Problem:\n{problem}\n\nAnswer:\n{answer}\n\nCorrect reasoning process:\n{reasoning}",
    "student": "Problem:\n{problem}\n\nReasoning process:\n{reasoning}",
}
"""Default user message per role (``{problem}``, ``{answer}``, ``{reasoning}`` are filled in)."""

TEMPLATE_FIELDS = ("problem", "answer", "reasoning")

CRITIC_LABELS = LEVELS
VERIFIER_LABELS = ("YES", "NO")


def check_template(template: str, *, role: str, required: tuple[str, ...] = ("problem", "reasoning")) -> None:
    """Raise ``ValueError`` if a user template names unknown fields or misses a required one."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"{role} user_template is not a valid format string: {exc}") from None
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"{role} user_template uses unknown field(s) {unknown}; known: {list(TEMPLATE_FIELDS)} "
                         "(write literal braces as {{ }})")
    missing = [f for f in required if f not in names]
    if missing:
        raise ValueError(f"{role} user_template must contain {{{missing[0]}}}")


def build_messages(role: str, *, problem: str, answer: str, reasoning: str,
                   system_prompt: Optional[str] = None, user_template: Optional[str] = None) -> tuple[dict, ...]:
    """Chat messages for ``role`` (critic, expand, simplify, verifier, corrupt, student)."""
    if role not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown CRV role '{role}' (known: {', '.join(SYSTEM_PROMPTS)})")
    system = SYSTEM_PROMPTS[role] if system_prompt is None else system_prompt
    template = USER_TEMPLATES[role] if user_template is None else user_template
    user = template.format(problem=problem.strip(), answer=str(answer).strip(), reasoning=reasoning.strip())
    return ({"role": "system", "content": system}, {"role": "user", "content": user})
