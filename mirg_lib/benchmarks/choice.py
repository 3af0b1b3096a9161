"""Multiple-choice benchmarks (BLINK, MMIU): the item, the letter a free-form reply chose, and the score.

A reply's letter is read in this order, the first rule that decides winning:

1. **where**: the ``<answer>`` block when there is one; else the text after the last ``</think>``; a
   ``<think>`` never closed (a reply cut off mid-thought) holds no answer. Otherwise the whole reply.
2. **an explicit statement**: "answer is (B)", "Answer: B", "the correct option is B", "I choose B". The
   last one counts (a model that restates its answer means the final one).
3. **a lone option letter**: the text is one letter ("B", "(B)", "B."), starts with one ("B. The red
   cube", "(B) ...") and names no other in parentheses or at a line's start (a reply that lists the options
   answers none), or holds exactly one distinct parenthesised letter; or it is one option's text
   exactly (case and surrounding punctuation ignored).

Letters beyond the item's options are not letters of it. A reply none of these decide, or one whose lone
letters disagree, is *undecidable*: wrong, and counted apart (``undecidable``), as BLINK's and MMIU's
official code count the replies their exact matching cannot read before they fall back to an LLM judge.
Every rule is a linear scan: any reply, however long or broken, gets a letter or None, never an error.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

from ..parsing import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

LETTERS = string.ascii_uppercase

# "answer is B", "answer: (B)", "final answer - B", "the correct option is B", "choose B": the letter alone,
# not the first letter of a word ("answer is Blue" names none), the words in any case, the letter a capital
# ("the answer is a red cube" names none) and not a word of a sentence ("Answer: I think ..." names none, "the
# answer is B because ..." names B); a bare "option (A)" is not a statement ("options (A) and (B)")
_EXPLICIT = re.compile(
    r"(?:(?i:answer)|(?i:correct|right|best)\s++(?i:option|choice))(?:\s++(?i:is|would\s++be|should\s++be|will\s++be))?\s*+[:\-=]?\s*+"
    r"(?:(?i:option|choice)\s++)?[\(\[]?\s*+([A-Z])(?:\s*+[\)\]])?(?![A-Za-z0-9])(?!(?<=I)\s++[a-z])"
    r"|\b(?i:choose|select|pick)\s++(?:(?i:option)\s++)?[\(\[]?([A-Z])[\)\]]?(?![A-Za-z0-9])"
)
_ALONE = re.compile(r"\s*+[\(\[]?\s*+([A-Z])\s*+[\)\]]?\s*+[.:]?\s*+", re.I)  # "b" alone is a letter too
_LEADING = re.compile(r"\s*+(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.:)])(?:\s|$)")
_OPTION_LINE = re.compile(r"^[ \t]*+(?:\(([A-Z])\)|([A-Z])[.:)])", re.M)  # a line that starts as an option does
_PAREN = re.compile(r"\(([A-Z])\)")
_STRIP = " \t\r\n.,;:!\"'`*()[]"


@dataclass
class ChoiceItem:
    """One multiple-choice question: its images (paths), the question, the options in order (A, B, ...) and
    the right option's letter."""

    id: str
    subtask: str
    images: list[str]
    question: str
    choices: list[str]
    answer: str  # "A", "B", ...
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]

    def prompt_text(self) -> str:
        """The question and its options, one per line as "(A) ...", and what to answer with."""
        options = "\n".join(f"({letter}) {text}" for letter, text in zip(self.letters, self.choices, strict=True))
        return f"{self.question}\n{options}\nAnswer with the option's letter."


def answer_text(reply: object) -> str:
    """The part of ``reply`` that holds its answer (rule 1 of the module's docstring)."""
    if not isinstance(reply, str):
        return ""
    i = reply.find(ANSWER_OPEN)
    if i >= 0:
        j = reply.find(ANSWER_CLOSE, i + len(ANSWER_OPEN))
        return reply[i + len(ANSWER_OPEN) : j if j >= 0 else len(reply)]
    k = reply.rfind(THINK_CLOSE)
    if k >= 0:
        return reply[k + len(THINK_CLOSE) :]
    if THINK_OPEN in reply:
        return ""  # a thought never closed: cut off before any answer
    return reply


def extract_letter(reply: object, choices: list[str]) -> str | None:
    """The option ``reply`` chose among ``choices`` (their letters A, B, ... in order), or None when it is
    undecidable (the module's docstring has the rules)."""
    valid = LETTERS[: len(choices)]
    text = answer_text(reply).replace("*", "")  # markdown emphasis: "the answer is **C**"
    if not text.strip():
        return None
    explicit = [next(g for g in m.groups() if g) for m in _EXPLICIT.finditer(text)]
    explicit = [c for c in explicit if c in valid]
    if explicit:
        return explicit[-1]
    alone = _ALONE.fullmatch(text)
    if alone and alone.group(1).upper() in valid:
        return alone.group(1).upper()
    parens = {m.group(1) for m in _PAREN.finditer(text)} & set(valid)
    lead = _LEADING.match(text)
    if lead:
        letter = next(g for g in lead.groups() if g)
        listed = {next(g for g in m.groups() if g) for m in _OPTION_LINE.finditer(text)} & set(valid)
        if letter in valid and parens <= {letter} and listed <= {letter}:  # "(A) or (C)", "A. red\nB. blue": no answer
            return letter
    if len(parens) == 1:
        return parens.pop()
    said = text.strip(_STRIP).casefold()
    matches = [letter for letter, option in zip(valid, choices, strict=True) if said and said == option.strip(_STRIP).casefold()]
    return matches[0] if len(matches) == 1 else None


def score_choices(items: list[ChoiceItem], replies: list[object], judge: Any = None) -> dict[str, Any]:
    """Accuracy per subtask (a reply is right when its letter is the item's answer; undecidable counts wrong
    and is counted apart) and their unweighted mean, as BLINK and MMIU report them. ``judge`` (an
    :class:`~mirg_lib.benchmarks.judge.LetterJudge`, off by default) reads the replies the rules cannot."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} items but {len(replies)} replies")
    per: dict[str, dict[str, int]] = {}
    letters = []
    judged = 0
    for it, reply in zip(items, replies, strict=True):
        letter = extract_letter(reply, it.choices)
        if letter is None and judge is not None:
            letter = judge(it, reply)
            judged += letter is not None
        letters.append(letter)
        s = per.setdefault(it.subtask, {"n": 0, "right": 0, "undecidable": 0})
        s["n"] += 1
        s["right"] += int(letter == it.answer)
        s["undecidable"] += int(letter is None)
    subtasks = {t: {**s, "acc": 100.0 * s["right"] / s["n"]} for t, s in sorted(per.items())}
    return {
        "metric": "accuracy",
        "subtasks": subtasks,
        "avg": sum(s["acc"] for s in subtasks.values()) / len(subtasks) if subtasks else None,
        "n": len(items),
        "undecidable": sum(s["undecidable"] for s in subtasks.values()),
        "judge": None if judge is None else judge.name,  # None: every letter read by the rules above
        "judged": judged,  # replies whose letter the judge gave
        "letters": letters,
    }
