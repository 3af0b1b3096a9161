"""MMIU (Meng et al. 2024), the multi-image understanding benchmark of Zhang et al.'s Tables 7-8.

The published layout (``all.json`` of the MMIU release): a JSON list of records with ``task``,
``input_image_path`` (the item's images, relative to the release's folder or ``image_root``), ``question``,
``context`` (the options: "Select from the following choices.\\nA: ...\\nB: ..."), ``output`` (the right
option's letter) and more fields kept as they are (``options``, ``visual_input_component``, ``source``,
...). When ``options`` is a list of texts it gives the options, else they are read from ``context``.

Scored as MMIU's official code scores it: accuracy per task, averaged over tasks, and per relation type (the
mean of its tasks', :data:`RELATION_TYPES`); the letter of a free-form reply read by
:func:`~mirg_lib.benchmarks.choice.extract_letter` (an LLM judge only when asked for).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ._rows import Row, image_file, need, read_rows
from .choice import LETTERS, ChoiceItem

NAME = "mmiu"
# MMIU's seven relation types and the release's task names in each (its taxonomy; Zhang et al.'s Tables 7-8 report
# the first four). Not checked against an official file of the release here: a task it names otherwise, or a new
# one, falls in "unmapped" and is still scored per task.
RELATION_TYPES = {
    "low-level semantic": ("forensic_detection_blink", "forensic_detection_forgerynet", "visual_quality_assessment_ve_lol_l"),
    "high-level semantic (objective)": (
        "face_retrieval", "functional_correspondence_blink", "functional_correspondence_funk_point", "handwritten_retrieval",
        "image2image_retrieval", "person_reid", "semantic_correspondence_blink", "semantic_correspondence_misc210k",
        "sketch2image_retrieval", "spot_the_similarity", "text2image_retrieval", "vehicle_retrieval", "visual_correspondence_blink",
        "visual_correspondence_scannet", "visually_grounded_reasoning_marvl", "visually_grounded_reasoning_nlvr2",
    ),
    "high-level semantic (subjective)": ("casuality_reasoning_next_qa", "emotion_recognition_expw"),
    "two-dimensional spatial": (
        "homography_estimation", "image_captioning_with_spatial_context", "image_spatial_transformation_estimation",
        "jigsaw_puzzle_solving", "point_tracking", "ravens_progressive_matrices", "single_object_tracking",
        "icon_question_answering_with_spatial_context",
    ),
    "three-dimensional spatial": (
        "multiview_reasoning", "threed_cad_recognition", "threed_depth_estimation", "threed_indoor_recognition",
        "threed_object_detection", "threed_object_tracking", "threed_pose_estimation", "threed_question_answering",
        "threed_scene_reconstruction",
    ),
    "continuous temporal": (
        "next_img_prediction", "meme_vedio_understanding", "temporal_ordering", "action_quality_assessment",
        "general_action_recognition", "mevis", "temporal_localization", "video_captioning",
    ),
    "discrete temporal": ("gui_next_action_prediction", "textual_cloze", "visual_cloze", "visual_coherence", "visual_ordering"),
}
_TYPE_OF = {task: kind for kind, tasks in RELATION_TYPES.items() for task in tasks}


def relation_type(task: str) -> str:
    """The relation type of an MMIU task (its name in any case), or "unmapped"."""
    return _TYPE_OF.get(task.strip().casefold(), "unmapped")


SEMANTIC = ("low-level semantic", "high-level semantic (objective)", "high-level semantic (subjective)")


def semantic_mean(subtasks: dict[str, dict]) -> float | None:
    """The mean accuracy over the tasks of the three semantic relation types (Zhang et al.'s Table 7 AVG);
    None without such a task."""
    accs = [s["acc"] for task, s in subtasks.items() if relation_type(task) in SEMANTIC]
    return sum(accs) / len(accs) if accs else None


def type_means(subtasks: dict[str, dict]) -> dict[str, float]:
    """Each relation type's accuracy: the mean over its tasks' accuracies, as MMIU reports a type."""
    by: dict[str, list[float]] = {}
    for task, s in subtasks.items():
        by.setdefault(relation_type(task), []).append(s["acc"])
    return {kind: sum(v) / len(v) for kind, v in sorted(by.items())}
FIELDS = ("task", "input_image_path", "question", "context", "output", "options")
_OPTION = re.compile(r"^\s*\(?([A-Z])\s*[\):.]\s*(.*\S)\s*$")
_ANSWER = re.compile(r"\s*\(?\s*([A-Z])\s*\)?\s*(?:[:.]\s*.*)?", re.S)


def looks_like(record: Any) -> bool:
    """Whether a record is MMIU's (its own field names)."""
    return isinstance(record, dict) and "input_image_path" in record and "output" in record


def options_of(row: Row) -> list[str]:
    """The options' texts in letter order: the ``options`` list, else the "A: ..." lines of ``context``."""
    given = row.value.get("options")  # MMIU's own release writes it as one string, like ``context``: read from that
    if isinstance(given, list):
        if len(given) < 2 or not all(isinstance(o, str) and o.strip() for o in given):
            raise row.error("options", f"expected at least two option texts, got {given!r:.80}")
        return [_OPTION.match(o).group(2) if _OPTION.match(o) else o for o in given]
    context = need(row, "context", str)
    found = [m for m in map(_OPTION.match, context.splitlines()) if m]
    letters = "".join(m.group(1) for m in found)
    if len(found) < 2 or letters != LETTERS[: len(found)]:
        raise row.error("context", f"expected its options as lines 'A: ...', 'B: ...' in order, got {context!r:.120}")
    return [m.group(2) for m in found]


def parse(row: Row, root: Path, cache: Path) -> ChoiceItem:
    task = need(row, "task", str).strip()
    paths = need(row, "input_image_path", list)
    images = [image_file(row, f"input_image_path[{j}]", p, root, cache) for j, p in enumerate(paths)]
    question = need(row, "question", str).strip()
    choices = options_of(row)
    raw = need(row, "output", str)
    m = _ANSWER.fullmatch(raw)
    if not m or m.group(1) not in LETTERS[: len(choices)]:
        raise row.error("output", f"expected the right option's letter (A-{LETTERS[len(choices) - 1]}), got {raw!r:.40}")
    extra = {k: v for k, v in row.value.items() if k not in FIELDS}
    return ChoiceItem(f"{task}/{row.file.stem}-{row.index}", task, images, question, choices, m.group(1), extra)


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[ChoiceItem]:
    """Every item of a local MMIU copy (``all.json``, or a folder of such files)."""
    from ..paths import runs_dir

    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "mmiu_images"
    return [parse(row, Path(image_root) if image_root is not None else row.file.parent, cache) for row in read_rows(path)]
