"""Normalising extracted math answers, and the readings an ambiguous answer allows.

``normalize_answer`` turns the many spellings of one answer into one string: math delimiters,
``\\left``/``\\right``, spacing commands, ``\\dfrac``/``\\tfrac``/``\\cfrac``, ``\\frac12``, ``\\sqrt3``,
degrees (``^\\circ``, ``°``), dollars, units in ``\\text{}`` or plain words after a number, trailing
periods, ``{,}`` thousands groups, ``;`` or "and"/"or" between listed items.

``answer_forms`` lists the readings of a normalised answer that a grader should accept:
``x = 5`` is also ``5``; ``1,000`` is ``1000``; ``1,22`` may be ``1.22`` (decimal comma) or the pair
``(1, 22)``; ``28\\%`` is ``28`` and ``0.28``; a bare list ``1, -2`` is also the tuple ``(1, -2)``.

``number_value`` reads plain numbers (integers, decimals, fractions, ``\\frac{a}{b}``, mixed numbers
``4 4/9``) exactly, as :class:`fractions.Fraction`, with the number of decimals written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

_KNOWN_CMDS = ("frac", "dfrac", "tfrac", "cfrac", "sqrt", "left", "right", "pi", "cdot", "times", "infty",
               "boxed", "text", "leq", "geq", "le", "ge", "neq", "pm", "circ", "mathrm")
_DOUBLE_BACKSLASH_CMD = re.compile(r"(?<!\\)\\\\(?=(?:" + "|".join(_KNOWN_CMDS) + r")(?![a-zA-Z]))")
_SPACING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|displaystyle|textstyle|quad|qquad)(?![a-zA-Z])"
                      r"|(?<!\\)\\[,;:! ]|~")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\\circ|\s*degrees?\b")
_PERCENT = re.compile(r"\s*(?:\\%|%|\bpercentage\b|\bpercent\b|\bpct\b)")
_DOLLAR = re.compile(r"\\\$|\$|\bdollars?\b|€|£")
_UNIT_WORDS = re.compile(
    r"(?:\s*(?:\^?\{?[23]\}?|²|³))?\s*\b(?!(?:sin|cos|tan|cot|sec|csc|log|ln|exp|lim|and|or|pi|sqrt|frac|mod|pmod|percent|percentage|pct)\b)"
    r"[a-zA-Z]{2,}(?:\s+[a-zA-Z]{2,})*(?:\s*(?:\^?\{?[23]\}?|²|³))?\s*$")
_FUNC_NAMES = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "lim", "max", "min"}
_SIMPLE_LHS = re.compile(r"^\s*(?:[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?|\([a-zA-Z, ]+\)|[a-zA-Z]\([a-zA-Z]\)|\\[a-zA-Z]+)\s*=(?!=)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACE_THOUSANDS = re.compile(r"^-?\d{1,3}(?: \d{3})+(?:\.\d+)?$")


def _fix_frac_sqrt(s: str) -> str:
    # \frac12 -> \frac{1}{2}; \frac1{72} -> \frac{1}{72}; \frac{3}4 -> \frac{3}{4}; \sqrt3 -> \sqrt{3}
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\frac\s*([a-zA-Z])\s*([a-zA-Z0-9])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt\s*(\d+|[a-zA-Z])(?![a-zA-Z{])", r"\\sqrt{\1}", s)
    s = re.sub(r"\\sqrt\s*\[(\w+)\]\s*(\d+|[a-zA-Z])(?![a-zA-Z{])", r"\\sqrt[\1]{\2}", s)
    return s


def strip_delimiters(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        before = s
        s = s.strip()
        for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left):len(s) - len(right)].strip()
        if s == before:
            break
    return s


def _text_groups(s: str) -> str:
    s = re.sub(r"\\text\s*\{\s*(and|or)\s*\}", r" \1 ", s)
    inner = _TEXT_GROUP.sub("", s)
    if re.search(r"\d", inner) or re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", inner)):
        # a number or math outside the text: the text is a unit or a remark -> drop it
        # (\mathrm{e} and \operatorname{...} are math, keep their content)
        s = re.sub(r"\\(?:mathrm|mathbf|operatorname)\s*\{([^{}]*)\}", r"\1", s)
        return re.sub(_TEXT_GROUP.pattern + r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?", " ", s)
    return _TEXT_GROUP.sub(r"\1", s)


def normalize_answer(ans: str) -> str:
    """One canonical spelling of an extracted answer (see the module docstring)."""
    s = str(ans).replace("\u2212", "-").replace("\u00a0", " ")
    s = _DOUBLE_BACKSLASH_CMD.sub(r"\\", s)
    s = strip_delimiters(s)
    s = re.sub(r"\\boxed\s*\{(.*)\}", r"\1", s, flags=re.DOTALL)
    s = re.sub(r"\\(?:dfrac|tfrac|cfrac)", r"\\frac", s)
    s = re.sub(r"\{,\}", ",", s)
    s = re.sub(r",\s*\\!\s*", ",", s)
    s = _SPACING.sub(" ", s)
    s = _text_groups(s)
    s = _DEGREES.sub("", s)
    s = _DOLLAR.sub("", s)
    s = s.replace("\\infty", "\\infty ").replace("\\neq", " \\neq ")
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(".").strip()
    s = re.sub(r"(?<=[0-9)}])\s*(?:or|and)\s*(?=[A-Za-z\\(\-])", ", ", s)
    s = re.sub(r"\s*(?:\\quad|\bor\b|\band\b)\s*", ", ", s) if re.search(r"\b(?:or|and)\b", s) else s
    s = re.sub(r",\s*,", ",", s).strip(" ,")
    s = _fix_frac_sqrt(s)
    m = _UNIT_WORDS.search(s) if len(s) <= 300 else None
    if m and re.search(r"\d", s[: m.start()]) and not (set(m.group(0).split()) & _FUNC_NAMES):
        s = s[: m.start()].strip()
    return s.rstrip(".").strip()


@dataclass(frozen=True)
class Number:
    """An exactly read number; ``decimals`` is how many digits followed the point (``None``: exact)."""

    value: Fraction
    decimals: Optional[int] = None


def number_value(s: str) -> Optional[Number]:
    """Read a plain number exactly: ``-12``, ``0.5``, ``.5``, ``3/4``, ``\\frac{3}{4}``, ``-\\frac34``,
    ``4 4/9`` / ``4\\frac{4}{9}`` (mixed), ``1,000`` (valid grouping), ``1 000``, ``1.5e3``; else ``None``."""
    t = s.strip().replace("{,}", ",")
    if not t or len(t) > 60:
        return None
    t = re.sub(r"^\+", "", t)
    neg = False
    if t.startswith("-"):
        neg, t = True, t[1:].strip()
        if t.startswith("(") and t.endswith(")"):
            t = t[1:-1].strip()
    if _THOUSANDS.match(t):
        t = t.replace(",", "")
    elif _SPACE_THOUSANDS.match(t):
        t = t.replace(" ", "")
    out: Optional[Number] = None
    m = re.fullmatch(r"(\d+)?(?:\.(\d+))?", t)
    if m and (m.group(1) or m.group(2)):
        out = Number(Fraction(t if not t.startswith(".") else "0" + t), len(m.group(2)) if m.group(2) else None)
    elif re.fullmatch(r"\d+(?:\.\d+)?[eE][+-]?\d{1,3}", t):
        out = Number(Fraction(t.lower()), None)
    else:
        m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", t) or re.fullmatch(r"\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}", t)
        if m and int(m.group(2)) != 0:
            out = Number(Fraction(int(m.group(1)), int(m.group(2))))
        else:
            m = (re.fullmatch(r"(\d{1,3}(?: \d{3})+|\d+)\s+(\d+)\s*/\s*(\d+)", t)
                 or re.fullmatch(r"(\d+)\s*\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}", t))
            if m and int(m.group(3)) != 0 and int(m.group(2)) < int(m.group(3)):
                out = Number(int(m.group(1).replace(" ", "")) + Fraction(int(m.group(2)), int(m.group(3))))
    if out is None:
        return None
    return Number(-out.value, out.decimals) if neg else out


def numbers_equal(a: Number, b: Number) -> bool:
    """Exact equality; a decimal written with k >= 3 digits also equals the exact value it rounds
    from; two decimals agree to a relative 1e-6."""
    if a.value == b.value:
        return True
    if a.decimals is not None and b.decimals is not None:
        return abs(a.value - b.value) <= Fraction(1, 10**6) * max(abs(a.value), abs(b.value), 1)
    dec, exact = (a, b) if a.decimals is not None else (b, a)
    if dec.decimals is None or dec.decimals < 3:
        return False
    return abs(dec.value - exact.value) <= Fraction(1, 2 * 10**dec.decimals) * Fraction(1000001, 1000000)


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside (), [], {} (``\\{``/``\\}`` count as braces)."""
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            cur.append(s[i:i + 2])
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    return parts


@dataclass(frozen=True)
class Form:
    """One reading of an answer."""

    text: str
    percent_scaled: bool = False


def _strip_lhs(item: str) -> str:
    m = _SIMPLE_LHS.match(item)
    if m and "=" not in item[m.end():] and item.count("=") == 1:
        return item[m.end():].strip()
    return item


def answer_forms(ans: str) -> list[Form]:
    """Readings of an extracted answer (normalised first); the first is the plain normalisation."""
    s = normalize_answer(ans)
    forms: list[str] = [s]
    scaled: list[str] = []
    if _PERCENT.search(s):
        plain = _PERCENT.sub("", s).strip()
        forms = [plain]
        n = number_value(plain)
        if n is not None:
            scaled.append(str(n.value / 100))
    s2 = forms[0]
    s2 = re.sub(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*\\in\s*", "", s2)
    if s2 != forms[0]:
        forms.append(s2)
    # var = value (also in lists: "x = -5, p = 14/3" -> "-5, 14/3")
    items = split_top_level(s2.replace(";", ",")) if not re.search(r"[()\[\]]", s2) or ";" in s2 else split_top_level(s2)
    stripped = [_strip_lhs(it) for it in items]
    if stripped != items or ";" in s2:
        forms.append(", ".join(stripped))
    if len(stripped) > 1 and all(stripped):
        # a bare list is also a tuple (gold "0,1" vs "(0,1)") and, with one comma, a decimal comma
        joined = ", ".join(stripped)
        if not (joined.startswith("(") and joined.endswith(")")):
            forms.append(f"({joined})")
        if len(stripped) == 2 and all(re.fullmatch(r"-?\d+", x) for x in stripped) and not stripped[1].startswith("-"):
            forms.append(f"{stripped[0]}.{stripped[1]}")
    if _SPACE_THOUSANDS.match(s2) or _THOUSANDS.match(s2):
        forms.append(s2.replace(",", "").replace(" ", ""))
    if re.fullmatch(r"[\d\s/]+", s2) and number_value(s2) is None and len(s2.split()) > 1:
        forms.append(s2.split()[-1])  # "4 4/9 2": a run of numbers, the last one counts
    m = re.fullmatch(r"(-?\d+),(\d{1,2}|\d{4,})", s2)
    if m:
        forms.append(f"{m.group(1)}.{m.group(2)}")
    out, seen = [], set()
    for f in forms:
        f = f.strip()
        if f and f not in seen:
            seen.add(f)
            out.append(Form(f))
    for f in scaled:
        if f not in seen:
            seen.add(f)
            out.append(Form(f, percent_scaled=True))
    return out
