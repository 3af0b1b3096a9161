"""The base model's training examples and its grounding-attention loss (stage ``00_base_model``).

An example is a prompt (images and question), an answer, and, for the grounding-attention loss, its
*grounding points*: (first answer token, last answer token + 1 or -1, image token). The positions that
predict those answer tokens are taught to look, with head 0 of the supervised layers, at the image token
that holds the object the answer is about there:

* an answer with grounded captions (``<|object_ref_start|>the small red circle<|object_ref_end|><|box_start|>
  ...<|box_end|>``, or ``the small red circle: {"bbox_2d": [...]}`` as Zhang et al.'s reasoning names, with or without a MIRG-RL ``<bbox_id>[N-M]</bbox_id>`` before it) gets one point per caption
  whose box lies on an object of its image (:func:`caption_points`), and one per object named in a listing of an
  image ("Image 2: the small red solid circle, ...", :func:`listing_points`): a description of an image looks
  at each object as it names it;
* any other answer gets one point at its start, or where its first box starts (``at_box``), for the item's
  target (:func:`target_tokens`).

A point whose end is -1 runs for the trainer's span (``grounding_attention_span``; 0: to the answer's end).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .items import Item
from .prompts import user_turn

CAPTION_RE = re.compile(  # Qwen-VL's grounded caption (with MIRG-RL's bbox_id), or an object named then boxed in JSON
    r"(?:<bbox_id>\[(\d+)-\d+\]</bbox_id>)?(?:<\|object_ref_start\|>[^<]*<\|object_ref_end\|>"
    r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>"
    r"|the [a-z -]{1,60}: \{\"bbox_2d\": \[(\d+), (\d+), (\d+), (\d+)\]\})"
)
LISTING_RE = re.compile(r"Image (\d): ([^.<>]{0,2000})\.")
IMAGE_MENTION_RE = re.compile(r"\bimage[\s\-]*(\d)\b|\b(first|second|third|fourth|fifth|sixth) image\b", re.I)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


def box_start_token(reply: str, tokenizer) -> int:
    """The index of the token of ``reply`` where its first box starts (Zhang's ``"bbox_2d": [``, MIRG-RL's
    ``<|box_start|>``); 0 when it has none."""
    marks = [i for i in (reply.find("<|box_start|>"), reply.find('"bbox_2d"')) if i >= 0]
    if not marks:
        return 0
    return char_to_token(reply, min(marks), tokenizer)


def char_to_token(text: str, at: int, tokenizer) -> int:
    """The index of the token of ``text`` that holds character ``at`` (the first ending after it)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return next((k for k, (_, b) in enumerate(offsets) if b > at), 0)


def object_cells(image: dict[str, Any], rows: int, cols: int) -> dict[int, int]:
    """Which merged token (raster index on a ``rows`` x ``cols`` grid) holds which object of a scene's image:
    the token whose cell holds the object's box centre; when several centres share a cell the largest object
    has it (the others have none). The object's place in ``image["objects"]`` -> token index."""
    iw, ih = image["size"]
    objects = image["objects"]
    holder: dict[int, int] = {}
    for k in sorted(range(len(objects)), key=lambda k: (objects[k]["box"][2] - objects[k]["box"][0]) * (objects[k]["box"][3] - objects[k]["box"][1])):
        x1, y1, x2, y2 = objects[k]["box"]
        r = min(rows - 1, max(0, int((y1 + y2) / 2 / ih * rows)))
        c = min(cols - 1, max(0, int((x1 + x2) / 2 / iw * cols)))
        holder[r * cols + c] = k
    return {k: cell for cell, k in holder.items()}


def _grid(image_grid_thw: torch.Tensor, merge: int) -> list[tuple[int, int]]:
    return [(int(h) // merge, int(w) // merge) for _, h, w in image_grid_thw.tolist()]


def object_token(scene: dict[str, Any], image: int, place: int, sizes: list[tuple[int, int]]) -> int | None:
    """Index, among all the image tokens of a prompt (images one after another, each in raster order on the
    merged grids ``sizes``), of the token holding object ``place`` of the scene's ``image`` (1-based); None when
    that object holds no token of its own."""
    k = image - 1
    if not 0 <= k < min(len(sizes), len(scene["images"])):
        return None
    cell = object_cells(scene["images"][k], *sizes[k]).get(place)
    return None if cell is None else sum(r * c for r, c in sizes[:k]) + cell


def target_tokens(item: Item, image_grid_thw: torch.Tensor, merge: int) -> list[int]:
    """Indices, among all the image tokens of ``item``'s prompt, of the token that holds the item's target
    object (:func:`object_cells`); [] when the item has no scene or its target holds no token of its own."""
    if item.scene is None or not item.target_image:
        return []
    image = item.scene["images"][item.target_image - 1] if item.target_image <= len(item.scene["images"]) else {"objects": []}
    place = next((j for j, o in enumerate(image["objects"]) if o.get("oid") == item.scene["target"].get("oid")), None)
    token = None if place is None else object_token(item.scene, item.target_image, place, _grid(image_grid_thw, merge))
    return [] if token is None else [token]


def _image_before(answer: str, at: int, default: int) -> int:
    """The image the answer last names before character ``at`` ("Image 2", "image-2", "the second image")."""
    last = None
    for m in IMAGE_MENTION_RE.finditer(answer, 0, at):
        last = int(m.group(1)) if m.group(1) else ORDINALS.index(m.group(2).lower()) + 1
    return last or default


def caption_points(item: Item, answer: str, tokenizer, image_grid_thw: torch.Tensor, merge: int) -> list[tuple[int, int, int]]:
    """One grounding point per grounded caption of ``answer`` whose box (0-1000) lies on an object (IoU >= 0.5,
    the best) of its image: the image its ``<bbox_id>[N-M]`` names, else the last one the answer names before
    it, else the item's target image. Each point starts at the caption's first token; [] without a scene."""
    from .boxes import Box, Frame, iou

    if item.scene is None:
        return []
    sizes = _grid(image_grid_thw, merge)
    points = []
    for m in CAPTION_RE.finditer(answer):
        image = int(m.group(1)) if m.group(1) else _image_before(answer, m.start(), item.target_image or 1)
        if not 1 <= image <= len(item.scene["images"]):
            continue
        scene_image = item.scene["images"][image - 1]
        box = Box(*(int(g) for g in (m.groups()[1:5] if m.group(2) else m.groups()[5:])), frame=Frame.REL1000)
        size = tuple(scene_image["size"])
        scored = [(iou(box, Box(*o["box"], frame=Frame.ABS, size=size)), j) for j, o in enumerate(scene_image["objects"])]
        best, place = max(scored, default=(0.0, None))
        token = None if best < 0.5 else object_token(item.scene, image, place, sizes)
        if token is not None:
            points.append((char_to_token(answer, m.start(), tokenizer), -1, token))
    return points


def listing_points(item: Item, answer: str, tokenizer, image_grid_thw: torch.Tensor, merge: int) -> list[tuple[int, int, int]]:
    """One grounding point per object named in a listing of an image ("Image 2: the small red solid circle, the
    large blue dotted star.": the base's ``multi_describe`` list form, the scripted teacher's read-outs): the
    object of that image so described (the first not yet named, in reading order), from the name's first
    token; [] without a scene."""
    from .world.objects import SIZE_WORDS, reading_order_key

    if item.scene is None:
        return []
    sizes = _grid(image_grid_thw, merge)
    points = []
    for m in LISTING_RE.finditer(answer):
        image = int(m.group(1))
        if not 1 <= image <= len(item.scene["images"]):
            continue
        scene_image = item.scene["images"][image - 1]
        places = sorted(range(len(scene_image["objects"])), key=lambda j: reading_order_key(scene_image["objects"][j]["box"], scene_image["size"]))
        named = {j: "the {} {} {} {}".format(SIZE_WORDS.get(o["size"], o["size"]), o["colour"], o["pattern"], o["shape"]) for j, o in enumerate(scene_image["objects"]) if "shape" in o}
        at, used = m.start(2), set()
        for name in m.group(2).split(", "):
            place = next((j for j in places if j not in used and named.get(j) == name.strip()), None)
            token = None if place is None else object_token(item.scene, image, place, sizes)
            if place is not None:
                used.add(place)  # named, with a token of its own or not: a later same-named object is the next one
            if token is not None:
                points.append((char_to_token(answer, at, tokenizer), -1, token))
            at += len(name) + 2
    return points


def grounding_points(item: Item, answer: str, tokenizer, image_grid_thw: torch.Tensor, merge: int, at_box: bool = False) -> list[tuple[int, int, int]]:
    """The answer's grounding points: one per grounded caption (:func:`caption_points`) and per object named in
    a listing of an image (:func:`listing_points`), in the answer's order; or else one for the item's target
    from the answer's start (from its first box with ``at_box``)."""
    points = sorted(caption_points(item, answer, tokenizer, image_grid_thw, merge) + listing_points(item, answer, tokenizer, image_grid_thw, merge))
    if points:
        return points
    start = box_start_token(answer, tokenizer) if at_box else 0
    return [(start, -1, t) for t in target_tokens(item, image_grid_thw, merge)]


def expression_tokens(prompt_ids: torch.Tensor, tokenizer) -> list[int]:
    """Positions of the prompt's referring-expression words: the tokens between its first
    ``<|object_ref_start|>`` and the ``<|object_ref_end|>`` after it ([] when it has none)."""
    start, end = tokenizer.convert_tokens_to_ids(["<|object_ref_start|>", "<|object_ref_end|>"])
    ids = prompt_ids.tolist()
    if start not in ids:
        return []
    a = ids.index(start)
    b = ids.index(end, a) if end in ids[a:] else a + 1
    return list(range(a + 1, b))


class PrecomputedVL(torch.utils.data.Dataset):
    """Prompt ids, answer ids and processed pixels of every item, computed once; with ``grounding``, also the
    answer's grounding points (:func:`grounding_points`) and which prompt tokens are the referring
    expression's words (:func:`expression_tokens`), for the grounding-attention loss."""

    def __init__(self, items: list[Item], processor, answers: list[str], grounding: bool = False, texts: list[tuple[str, str]] = (), prompts: list[str] | None = None, ground_at_box: list[bool] | None = None):
        """``texts``: (prompt, reply) pairs added as text-only examples (no pixels). ``prompts``: each item's
        prompt text (default: its question). ``ground_at_box``: for each item, whether an answer without
        grounded captions is grounded from where its first box starts (:func:`box_start_token`: a
        reasoning reply's) instead of from its start."""
        self.examples = []
        tok = processor.tokenizer
        merge = processor.image_processor.merge_size
        for it, ans, prompt, at_box in zip(items, answers, prompts or [it.question for it in items], ground_at_box or [False] * len(items), strict=True):
            imgs = [Image.open(p).convert("RGB") for p in it.images]
            text = processor.apply_chat_template(user_turn(len(imgs), prompt), add_generation_prompt=True, tokenize=False)
            enc = processor(text=[text], images=imgs, return_tensors="pt")
            example = {
                "prompt_ids": enc["input_ids"][0],
                "answer_ids": torch.tensor(tok(ans + "<|im_end|>", add_special_tokens=False)["input_ids"]),
                "pixel_values": enc["pixel_values"],
                "image_grid_thw": enc["image_grid_thw"],
            }
            if grounding:
                points = grounding_points(it, ans, tok, enc["image_grid_thw"], merge, at_box)
                example["grounding_points"] = torch.tensor(points, dtype=torch.long).reshape(-1, 3)
                example["expression_tokens"] = torch.tensor(expression_tokens(enc["input_ids"][0], tok), dtype=torch.long)
            self.examples.append(example)
        for prompt, reply in texts:
            text = processor.apply_chat_template(user_turn(0, prompt), add_generation_prompt=True, tokenize=False)
            example = {
                "prompt_ids": torch.tensor(tok(text, add_special_tokens=False)["input_ids"]),
                "answer_ids": torch.tensor(tok(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]),
            }
            if grounding:  # nothing to look at: the grounding-attention loss skips the row
                example["grounding_points"] = torch.zeros((0, 3), dtype=torch.long)
                example["expression_tokens"] = torch.zeros(0, dtype=torch.long)
            self.examples.append(example)

    def lengths(self) -> list[int]:
        """Every example's length in tokens (prompt and answer)."""
        return [len(e["prompt_ids"]) + len(e["answer_ids"]) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.examples[i]


def length_grouped(trainer, dataset: PrecomputedVL):
    """Have ``trainer`` draw batches of examples of similar length (transformers' ``LengthGroupedSampler``,
    seeded like its random sampler): the language texts run two to three times longer than an image item,
    and a batch padded to its longest row took 2.4 times as long per step (docs/log.md)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = dataset.lengths()
    trainer._get_train_sampler = lambda *_a, **_k: LengthGroupedSampler(trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps, lengths=lengths)
    return trainer


@dataclass
class CompletionCollator:
    """Right-padded batches, loss on the answer only, Qwen2-VL's ``mm_token_type_ids``; for the
    grounding-attention loss, ``query_target`` (the key position each query position must look at, -1: none;
    a point of end -1 runs ``span`` answer tokens, 0: to the answer's end) and ``expression_mask``."""

    pad_token_id: int
    image_token_id: int
    span: int = 0

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = [len(e["prompt_ids"]) + len(e["answer_ids"]) for e in examples]
        n, L = len(examples), max(lengths)
        ids = torch.full((n, L), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, L), -100, dtype=torch.long)
        mask = torch.zeros((n, L), dtype=torch.long)
        for i, e in enumerate(examples):
            seq = torch.cat([e["prompt_ids"], e["answer_ids"]])
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
            labels[i, len(e["prompt_ids"]) : len(seq)] = e["answer_ids"]
        image = ids == self.image_token_id
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "mm_token_type_ids": image.long()}
        with_images = [e for e in examples if "pixel_values" in e]  # text-only examples have none
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        if examples and "grounding_points" in examples[0]:  # PrecomputedVL(grounding=True)
            query = torch.full((n, L), -1, dtype=torch.long)
            words = torch.zeros((n, L), dtype=torch.bool)
            for i, e in enumerate(examples):
                prompt, answer = len(e["prompt_ids"]), len(e["answer_ids"])
                keys = image[i].nonzero()[:, 0]
                for start, end, token in e["grounding_points"].tolist():
                    stop = end if end >= 0 else (start + self.span if self.span else answer)
                    # the position predicting answer token t is prompt + t - 1
                    query[i, prompt + start - 1 : prompt + min(stop, answer) - 1] = keys[token]
                words[i, e["expression_tokens"]] = True
            batch["query_target"], batch["expression_mask"] = query, words
        return batch


GROUNDING_KEYS = ("query_target", "expression_mask")  # the collator's fields the model's forward does not take


@contextlib.contextmanager
def captured_attention(model, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, every forward pass of ``model`` records the attention probabilities (batch x heads x
    query x key) of its language-model ``layers`` into the yielded dict, under each layer's non-negative index
    (None unless the text model runs ``eager`` attention, the implementation that returns them)."""
    blocks = model.model.language_model.layers
    seen: dict[int, torch.Tensor] = {}
    hooks = [blocks[i].self_attn.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, out[1])) for i in sorted({i % len(blocks) for i in layers})]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def grounding_attention_loss(weights: list[torch.Tensor], query_target: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """Mean over ``weights`` (each layer's attention probabilities, batch x heads x query x key; head 0 is
    supervised) and over the query positions with a target (``query_target`` >= 0) of
    ``-log(attention mass on the target)``: the key ``query_target`` names, or, with ``key_mask`` (batch x
    key), the keys it marks in that row (rows with none are skipped). None when no query has one."""
    queries = query_target >= 0
    if key_mask is not None:
        queries &= key_mask.any(-1)[:, None]
    if not weights or not bool(queries.any()):
        return None
    losses = []
    for w in weights:
        if w is None:
            raise RuntimeError("the grounding-attention loss needs attention weights: the text model must run eager attention")
        head = w[:, 0].float()  # batch x query x key
        if key_mask is None:
            mass = head.gather(-1, query_target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        else:
            mass = (head * key_mask[:, None, :].float()).sum(-1)
        losses.append(-torch.log(mass.clamp_min(1e-6))[queries].mean())
    return torch.stack(losses).mean()


def grounding_trainer(weight: float, layers: list[int], expression_layers: list[int] | None = None, **kwargs):
    """transformers' ``Trainer`` (``kwargs``) with a grounding-attention loss added to the language-model loss:
    head 0 of each of ``layers`` (language-model layer indices) is trained to attend, from the positions the
    collator's ``query_target`` marks, to the image token it names: ``weight * mean(-log(attention mass))``
    (:func:`grounding_attention_loss`). Head 0 of each of ``expression_layers`` is trained the same way, from
    the same positions, to attend to the referring expression's words (``expression_mask``): the first hop,
    gathering what to look for, which the second needs in its query. Supervised attention, a pointer before
    the box; the base model's selection hop (docs/log.md). The language model runs transformers' ``eager``
    attention, which returns the weights; checkpoints are ordinary ones. The losses are logged as
    ``grounding_attention_loss`` and ``expression_attention_loss`` (means since the last log line). With
    ``weight`` 0 it is the plain ``Trainer``."""
    from transformers import Trainer

    if weight <= 0:
        return Trainer(**kwargs)

    class _GroundingTrainer(Trainer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._sums: dict[str, list[float]] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            query, words = inputs.pop("query_target"), inputs.pop("expression_mask")
            masks = {"grounding": (layers, None), "expression": (expression_layers or [], words)}
            depth = len(model.model.language_model.layers)
            with captured_attention(model, [i for ls, _ in masks.values() for i in ls]) as seen:
                loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            for name, (ls, key_mask) in masks.items():
                extra = grounding_attention_loss([seen[i % depth] for i in ls], query, key_mask) if ls else None
                if extra is not None:
                    total = self._sums.setdefault(name, [0.0, 0])
                    total[0] += float(extra.detach())
                    total[1] += 1
                    loss = loss + weight * extra
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *a, **kw):
            if "loss" in logs:
                for name, (total, n) in self._sums.items():
                    logs[f"{name}_attention_loss"] = round(total / n, 4)
                self._sums = {}
            super().log(logs, *a, **kw)

    kwargs["model"].set_attn_implementation({"text_config": "eager"})
    return _GroundingTrainer(**kwargs)
