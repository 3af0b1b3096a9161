"""An LLM judge for the multiple-choice replies the rules of :mod:`.choice` cannot read, as BLINK's and MMIU's
official code fall back to one (GPT). Off by default: a result says which judge read it, if any.

The judge is any OpenAI-compatible chat endpoint (the generation backend's client, :class:`mirg_lib.backends.OpenAIBackend`:
a local ``vllm serve``, ``transformers serve``, or a hosted model), asked greedily which option a reply chooses,
given the question and its options; its answer is read as one letter of the item's options, and anything else
leaves the reply undecidable. Only undecidable replies are sent; a reply is cut to its last
:data:`MAX_REPLY_CHARS` characters (where the answer is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .choice import ChoiceItem

MAX_REPLY_CHARS = 4000
PROMPT = (
    "You are given a multiple-choice question, its options and a reply to it. Which option does the reply choose? "
    "Answer with the option's letter alone, or with Z if the reply chooses none of them or several.\n\n"
    "Question: {question}\nOptions:\n{options}\nReply: {reply}\nLetter:"
)
_LETTER = re.compile(r"\s*\(?([A-Z])\)?\s*[.:]?\s*")


@dataclass
class LetterJudge:
    """Ask ``client`` (an :class:`~mirg_lib.backends.OpenAIBackend`) which option a reply chose."""

    client: object

    @property
    def name(self) -> str:
        return f"{self.client.model} at {self.client.base_url}"  # type: ignore[attr-defined]

    def __call__(self, item: ChoiceItem, reply: object) -> str | None:
        text = reply if isinstance(reply, str) else ""
        options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(item.letters, item.choices, strict=True))
        answer = self.client.ask(PROMPT.format(question=item.question, options=options, reply=text[-MAX_REPLY_CHARS:]), max_tokens=8)  # type: ignore[attr-defined]
        m = _LETTER.fullmatch(answer or "")
        return m.group(1) if m and m.group(1) in item.letters else None


def make_judge(base_url: str, model: str, api_key_env: str = "") -> LetterJudge | None:
    """A judge at ``base_url`` running ``model`` (its key in the environment variable ``api_key_env``); none
    without a URL."""
    if not base_url:
        return None
    if not model:
        raise ValueError("an LLM judge needs the model's name (benchmarks.judge_model / --judge-model)")
    from ..backends import OpenAIBackend

    return LetterJudge(OpenAIBackend(base_url, model, api_key_env, timeout=120.0))
