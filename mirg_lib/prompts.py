"""Prompts for every recipe, built from a record's question and images only.

``additional_info`` of group_grounding holds the answer (which image, and the box), so no builder
here ever reads it: prompts are made from :func:`question_of`, which takes the question text alone.
"""

from __future__ import annotations

from typing import Any

from .formats import MGroundingRecord, MigRecord

# Zhang et al. 2025, section 3.1 (the teacher's and the policy's prompt suffix)
ZHANG_SUFFIX = (
    " First output the thinking process in <think> </think> tags and then output the final answer in "
    "<answer> </answer> tags. Output the bounding box coordinates in JSON format."
)
# The same for a policy that writes Qwen2-VL's box tokens (cot/sft/rejection/grpo/eval ``box_notation: tokens``)
ZHANG_TOKENS_SUFFIX = ZHANG_SUFFIX.replace(
    "Output the bounding box coordinates in JSON format.", "Output the bounding box as <|box_start|>(x1,y1),(x2,y2)<|box_end|>."
)
# MIRG-RL: reasoning whose objects carry image indices and boxes
MIRG_SUFFIX = (
    " First output the thinking process in <think> </think> tags, marking every object you mention as "
    "<bbox_id>[N-M]</bbox_id><|object_ref_start|>object<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|> "
    "(image N, object M), then output the final answer in <answer> </answer> tags as the target's bbox_id and box."
)
# A multiple-choice question (BLINK, MMIU) asked with a reasoning recipe's prompt: Zhang et al.'s instruction,
# the answer an option's letter instead of a box (mirg_lib.benchmarks)
CHOICE_REASONING_SUFFIX = (
    " First output the thinking process in <think> </think> tags and then output the final answer, the option's "
    "letter, in <answer> </answer> tags."
)
# Migician's evaluation code appends this to every question (its typo `<|box_start|>` twice kept)
MIGICIAN_SUFFIX = "Format:<|box_start|>(x1,y1),(x2,y2)<|box_start|>. Don't generate addtional words."

NOTATIONS = ("json", "tokens")  # how Zhang et al.'s replies write a box: the paper's JSON, or Qwen2-VL's box tokens
SUFFIXES = {"plain": "", "migician": " " + MIGICIAN_SUFFIX, "zhang": ZHANG_SUFFIX, "mirg": MIRG_SUFFIX}
STYLES = tuple(SUFFIXES)


def check_notation(notation: str) -> str:
    if notation not in NOTATIONS:
        raise ValueError(f"unknown box notation {notation!r}; expected one of {NOTATIONS}")
    return notation


def question_of(record: MigRecord | MGroundingRecord) -> str:
    """The question a model may see. Never includes ``additional_info``."""
    return record.question.strip()


def with_suffix(question: str, style: str = "plain", notation: str = "json") -> str:
    """The question followed by the recipe's instruction (``plain``: the question alone). ``notation``:
    the boxes Zhang et al.'s instruction asks for, ``json`` (the paper's) or ``tokens`` (Qwen2-VL's)."""
    if style not in SUFFIXES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {STYLES}")
    if check_notation(notation) == "tokens" and style == "zhang":
        return question.strip() + ZHANG_TOKENS_SUFFIX
    return question.strip() + SUFFIXES[style]


def user_turn(n_images: int, text: str) -> list[dict[str, Any]]:
    """A one-turn conversational prompt: one image entry per image, then the text (images passed
    separately, as transformers' chat templates and trl's VLM trainers take them)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def build_question(record: MigRecord | MGroundingRecord, style: str = "plain", notation: str = "json") -> str:
    return with_suffix(question_of(record), style, notation)


def build_messages(record: MigRecord | MGroundingRecord, style: str = "plain", notation: str = "json") -> list[dict[str, Any]]:
    return user_turn(len(record.images), build_question(record, style, notation))
