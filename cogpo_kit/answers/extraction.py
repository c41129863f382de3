"""Finding the final answer in a model's output (or in a reference solution).

Order of evidence, strongest first:

1. the final part of a reasoning model's output (:func:`final_segment`): the text after the last
   end-of-thinking marker (``</think>``, Bespoke/OpenThoughts' ``<|end_of_thought|>``) or inside the
   last ``<|begin_of_solution|> ... <|end_of_solution|>``, when there is any; otherwise the whole
   text with the markers removed (so no marker is ever part of an extracted answer);
2. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled; ``\\boxed 5`` too); boxes right
   before it, separated only by punctuation, or by a connector (comma, "and", "or") with at most three
   words and no sentence boundary, are joined (``\\boxed{1} and \\boxed{-2}`` -> ``1, -2``) — unless
   a stated answer ("The final answer is ...") follows the last box, which then wins;
3. "the final answer is ...", "the answer is ...", "Answer: ...", "réponse est ...", "答案：..."
   (the last one), cut at the end of its sentence;
4. a short text that is itself an answer (``10\\text{ units}``, ``x + y - z + 2 = 0``) is kept whole;
5. the last math environment (``$...$``, ``\\(...\\)``, ``\\[...\\]``) when nothing but prose follows it;
6. the last number.

Model outputs can be long and hostile: the patterns avoid nested quantifiers, and the grader runs
extraction inside its time-limited worker.
"""

from __future__ import annotations

import re
from typing import Optional

_BOX_CMDS = ("\\boxed", "\\fbox", "\\framebox")

_ANSWER_PATTERNS = re.compile(
    r"(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is|answer\s*:|answer\s+is|\banswer\b(?=\s*(?:\$|\\\(|\\\[))"
    r"|réponse\s+est|réponse\s*:|答案[是为：:])",
    re.IGNORECASE,
)
_HOPE = re.compile(r"\s*I\s+hope\s+it\s+is\s+correct.*$", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"(?<![A-Za-z_])(?:-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+)")
_MATH_ENV = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$([^$]+?)(?<!\\)\$", re.DOTALL)
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z\u00c0-\u024f]{3,}|[\u3040-\u30ff\u4e00-\u9fff]+")
_FIRST_MATH = re.compile(r"\\frac\s*\{[^{}]*\}\s*\{[^{}]*\}|-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_LATEX_CMD = re.compile(r"\\[a-zA-Z]+")
_SEPARATOR_NOISE = re.compile(r"\\(?:quad|qquad|text|textbf|mathrm|mbox|,|;|:|!|\(|\)|\[|\])|[\s${}.,;:+\-*()\[\]\\]")


def matching_brace(text: str, open_idx: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (escaped braces skipped); -1 when unbalanced."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def find_boxed(text: str) -> list[tuple[int, int, str]]:
    """All ``\\boxed{...}``-style spans as ``(start, end, content)``, in order."""
    out: list[tuple[int, int, str]] = []
    i = 0
    while True:
        hits = [(text.find(cmd, i), cmd) for cmd in _BOX_CMDS]
        hits = [(p, c) for p, c in hits if p >= 0]
        if not hits:
            break
        pos, cmd = min(hits)
        j = pos + len(cmd)
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = matching_brace(text, j)
            if end < 0:  # unbalanced: take the rest of the line
                line_end = text.find("\n", j)
                end = len(text) if line_end < 0 else line_end
                out.append((pos, end, text[j + 1:end].strip()))
                break
            out.append((pos, end + 1, text[j + 1:end].strip()))
            i = end + 1
        elif j < len(text) and j > pos + len(cmd) and cmd == "\\boxed":  # "\boxed 5"
            m = re.match(r"[^\s$.,;]+", text[j:])
            if m:
                out.append((pos, j + m.end(), m.group(0)))
            i = j + (m.end() if m else 1)
        else:
            i = j
    return out


def _joinable(separator: str) -> bool:
    """Boxes separated by this text belong to one answer: punctuation/spacing only, or a connector
    (comma, "and", "or", ``\\quad``) with at most a few words, and no sentence boundary."""
    if len(separator) > 60 or re.search(r"[.!?]\s+[A-Z]|\n\s*\n", separator):
        return False
    plain = _SEPARATOR_NOISE.sub(" ", separator)
    words = [w for w in re.findall(r"[A-Za-z\u00c0-\u024f]+|[\u3040-\u30ff\u4e00-\u9fff]+", plain)
             if w.lower() not in {"text", "quad", "qquad", "and", "or"}]
    if not words:
        return True
    has_connector = bool(re.search(r",|;|\\quad|\band\b|\bor\b", separator))
    return has_connector and len(words) <= 3 and len(plain.split()) <= 4


def boxed_answer(text: str) -> Optional[str]:
    """Content of the last box, joined with the boxes right before it that belong with it."""
    boxes = find_boxed(text)
    if not boxes:
        return None
    group = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        if _joinable(text[prev[1]:group[0][0]]):
            group.insert(0, prev)
        else:
            break
    parts = [b[2] for b in group if b[2]]
    if not parts:
        return None
    return ", ".join(parts) if len(parts) > 1 else parts[0]


THINK_END_MARKERS = ("</think>", "<|end_of_thought|>")
"""End-of-thinking markers: R1-style ``</think>`` and Bespoke-Stratos / OpenThoughts' ``<|end_of_thought|>``."""
SOLUTION_BEGIN, SOLUTION_END = "<|begin_of_solution|>", "<|end_of_solution|>"
_MARKERS = re.compile(r"</?think>|<\|(?:begin|end)_of_(?:thought|solution)\|>")


def strip_markers(text: str) -> str:
    """``text`` without thinking / solution markers (``<think>``, ``</think>``, ``<|begin_of_thought|>``, ...)."""
    return _MARKERS.sub("", text)


def final_segment(text: str) -> str:
    """The part of an output that holds its answer.

    - the content of the last ``<|begin_of_solution|> ... <|end_of_solution|>`` (the end marker may
      be missing when the output was cut), when it is not blank;
    - else the text after the last end-of-thinking marker (``</think>``, ``<|end_of_thought|>``),
      when it is not blank;
    - else the whole text (a reasoning model cut before it closed its thinking, or one that put its
      answer inside it).

    Markers are removed from what is returned."""
    start = text.rfind(SOLUTION_BEGIN)
    if start >= 0:
        body = text[start + len(SOLUTION_BEGIN):]
        end = body.find(SOLUTION_END)
        body = body[:end] if end >= 0 else body
        if strip_markers(body).strip():
            return strip_markers(body)
    cut = max((text.rfind(m) + len(m), m) for m in THINK_END_MARKERS)
    if cut[0] >= len(cut[1]):  # a marker was found
        after = text[cut[0]:]
        if strip_markers(after).strip():
            return strip_markers(after)
    return strip_markers(text)


def _sentence_answer(segment: str) -> Optional[str]:
    """The answer inside the text following "the answer is"."""
    segment = _HOPE.sub("", segment).replace('\\"', '"').strip()
    segment = segment.strip(" \t\"'*:")
    if not segment:
        return None
    m = re.match(r"\s*(\$\$|\$|\\\(|\\\[)", segment)
    if m:  # the answer is a math environment: take it whole
        closer = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}[m.group(1)]
        end = segment.find(closer, m.end())
        while closer == "$" and end > 0 and segment[end - 1] == "\\":
            end = segment.find(closer, end + 1)
        if end > m.end():
            inner = segment[m.end():end].strip()
            rest = segment[end + len(closer):]
            # "$12 $ and $13 $": keep joined math pieces
            more = re.match(r"\s*(and|or|,)\s*\$([^$]+)\$", rest)
            if more:
                inner = f"{inner} {more.group(1)} {more.group(2).strip()}"
            return inner.rstrip(" .")
    # plain text: up to the end of the sentence or line
    cut = re.search(r"(?<!\d)\.(?:\s|$)|\.\s*$|\n|;\s|。", segment)
    piece = segment[: cut.start()] if cut else segment
    piece = piece.strip().rstrip(".")
    if not piece:
        return None
    # "The volume of $X$ is 120" -> "120"
    if _WORD.search(_LATEX_CMD.sub(" ", piece)) and " is " in piece:
        piece = piece.rsplit(" is ", 1)[1].strip()
    if not is_bare_answer(piece):
        # prose around the answer: its first math environment or number
        env = _MATH_ENV.search(piece)
        if env:
            return next(g for g in env.groups() if g is not None).strip() or None
        first = _FIRST_MATH.search(piece)
        return first.group(0).rstrip(",").strip() if first else None
    return piece.strip(" .") or None


def _last_phrase(text: str):
    last = None
    for m in _ANSWER_PATTERNS.finditer(text):
        last = m
    return last


def answer_phrase(text: str) -> Optional[str]:
    """The answer after the last "the answer is" (or similar), if any."""
    last = _last_phrase(text)
    if last is None:
        return None
    return _sentence_answer(text[last.end():])


def is_bare_answer(text: str) -> bool:
    """A short text with hardly any prose (and none before its math): it is the answer itself."""
    t = text.strip()
    if not t or len(t) > 80 or "\n" in t:
        return False
    t = re.sub(r"\\(?:begin|end)\s*\{[a-zA-Z*]+\}", " ", t)
    prose = _LATEX_CMD.sub(" ", re.sub(r"\\(?:text|textbf|mbox|mathrm|textnormal)\s*\{[^{}]*\}", " ", t))
    words = list(_WORD.finditer(prose))
    if len(words) > 2:
        return False
    first_math = re.search(r"[\d$\\=<>]", prose)
    return not (words and first_math and words[0].start() < first_math.start())


def last_math_env(text: str) -> Optional[str]:
    """Content of the last math environment, if no number follows it in the text."""
    last = None
    for m in _MATH_ENV.finditer(text):
        last = m
    if last is None:
        return None
    tail = text[last.end():]
    if _NUMBER.search(tail):
        return None
    content = next(g for g in last.groups() if g is not None).strip()
    return content or None


def last_number(text: str) -> Optional[str]:
    """The last number in the text (thousands separators kept, trailing period dropped)."""
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    if last is None:
        return None
    return last.group(0).rstrip(",").strip()


def extract_answer(text: Optional[str]) -> Optional[str]:
    """The final answer in a completion or solution: boxed / "answer is" / whole short answer /
    last math / last number (see the module docstring); ``None`` when there is none."""
    if text is None:
        return None
    text = final_segment(str(text))
    if not text.strip():
        return None
    boxes = find_boxed(text)
    phrase_at = _last_phrase(text)
    phrase = answer_phrase(text) if phrase_at else None
    if boxes:
        # a stated answer after the last box wins ("\boxed{200} ... The final answer is $10,455$")
        if phrase and phrase_at.start() > boxes[-1][1] and re.search(r"[\d\\]", phrase):
            return phrase
        boxed = boxed_answer(text)
        if boxed is not None:
            return boxed
    if phrase:
        return phrase
    if is_bare_answer(text):
        return text.strip().rstrip(".").strip()
    env = last_math_env(text)
    if env:
        return env
    return last_number(text)
