"""Base-model stage (``00_base_model``): the small model that plays the part of the pretrained base.

Three ways to a base, in this order:

1. ``model_name_or_path`` names a real local checkpoint (Qwen2-VL-7B-Instruct, Qwen2.5-VL-7B-Instruct):
   it is used as is and nothing is trained.
2. ``shipped`` names a committed checkpoint folder (with ``mirg.json``: the params, metrics and
   sha256 it was made with): it is checked and used, as a user starts from a downloaded base.
3. Otherwise a small Qwen2-VL is built (:mod:`mirg_lib.models`) and trained from scratch on the
   training pool's single-image referring expressions (``train_tasks``), so that it grounds
   single-image expressions and is weak at multi-image tasks, as Qwen2.5-VL-7B is on MIG-Bench.

Training uses transformers' ``Trainer`` on precomputed tensors (every image is processed once, not
every step), warm-up, gradient clipping, NaN checks through the trainer's logs, and resumes from the
last checkpoint of an interrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from .config import versioned_digest
from .grounding import CompletionCollator, PrecomputedVL, grounding_trainer, length_grouped, object_cells
from .io import atomic_dir, sha256_tree, write_json
from .items import Item, load_pool_items
from .paths import ROOT
from .results import device_name, read_log
from .trainers import stamp_matches
from .world.tasks import MULTI_TASK, SINGLE_TASK

# the referring tasks whose answer is a box after the question's expression: the language phase may put words
# before that box or write it in JSON, and grounds it from where it starts
REFER_TASKS = (SINGLE_TASK, MULTI_TASK)


@dataclass
class BaseModelConfig:
    """Section ``base_model`` of the params."""

    model_name_or_path: str = field(default="", metadata={"help": "a local real checkpoint folder (Qwen2-VL-7B-Instruct, ...): used as is, nothing trained"})
    shipped: str = field(default="", metadata={"help": "a committed checkpoint folder (repository-relative) to start from, as from a download"})
    arch: Literal["qwen2_vl", "qwen2_5_vl"] = field(default="qwen2_vl", metadata={"help": "the small base's architecture (transformers' classes)"})
    preset: str = field(default="tiny", metadata={"help": "the small base's size (mirg_lib.models.PRESETS)"})
    image_max_pixels: int = field(default=28 * 28 * 64, metadata={"help": "the processor's max_pixels"})
    train_tasks: list[str] = field(default_factory=lambda: ["single_refer"], metadata={"help": "training-pool tasks the grounding phase trains on"})
    max_steps: int = field(default=3000, metadata={"help": "grounding-phase steps"})
    batch_size: int = field(default=32, metadata={"help": "sequences per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "grounding-phase learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "learning-rate warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "transformers' scheduler name"})
    save_steps: int = field(default=500, metadata={"help": "steps between intermediate checkpoints"})
    keep_checkpoints: int = field(default=2, metadata={"help": "intermediate checkpoints kept (the newest), for scoring while training goes on"})
    logging_steps: int = field(default=25, metadata={"help": "steps between log lines"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision"})
    seed: int = field(default=0, metadata={"help": "seed of the model's initialisation, its tokenizer and its batches"})
    vision_warmup_steps: int = field(default=0, metadata={"help": "steps training the vision tower alone first, every merged token naming its object and place; 0: off"})
    vision_warmup_lr: float = field(default=1e-3, metadata={"help": "the warm-up's learning rate"})
    vision_warmup_batch_size: int = field(default=16, metadata={"help": "the warm-up's images per step"})
    vision_warmup_word_aligned: bool = field(default=False, metadata={"help": "the warm-up's attribute classifiers are the language model's embeddings of the attribute words"})
    grounding_attention_weight: float = field(default=0.0, metadata={"help": "weight of the loss teaching head 0 of grounding_attention_layers to look at the target's image token; 0: off"})
    grounding_attention_span: int = field(default=3, metadata={"help": "that loss looks from the positions predicting the answer's first N tokens; 0: every answer position"})
    grounding_attention_layers: list[int] = field(default_factory=lambda: [-1], metadata={"help": "language-model layers (Python indices) whose head 0 that loss supervises"})
    expression_attention_layers: list[int] = field(default_factory=list, metadata={"help": "layers whose head 0 also learns to look at the referring expression's words"})
    language_phase_steps: int = field(default=0, metadata={"help": "steps after the grounding phase over the image items and the world's language texts; 0: off"})
    language_phase_texts: int = field(default=4000, metadata={"help": "text-only sequences of the world's language in that phase"})
    language_phase_reasoning: int = field(default=0, metadata={"help": "single-image referring items answered there in the recipes' reasoning styles, box last"})
    language_phase_lr: float = field(default=3e-4, metadata={"help": "the language phase's learning rate (constant after warmup_steps)"})
    language_phase_words_before_box: int = field(default=0, metadata={"help": "3 in 4 referring answers there start with 1 to N words of the world's language; 0: off"})
    language_phase_json_boxes: float = field(default=0.0, metadata={"help": "share of the referring answers there whose box is Zhang et al.'s / Qwen2.5-VL's JSON"})
    language_phase_grounding_span: int = field(default=0, metadata={"help": "grounding_attention_span in the language phase; 0: the same"})
    language_phase_expression_layers: list[int] = field(default_factory=list, metadata={"help": "expression_attention_layers in the language phase; []: the same"})
    multi_phase_steps: int = field(default=0, metadata={"help": "steps after the other phases over the multi-image curriculum tasks and as many single-image items; 0: off"})
    multi_phase_tasks: list[str] = field(default_factory=lambda: ["multi_refer", "multi_describe"], metadata={"help": "the training-pool tasks of the multi-image phase"})
    multi_phase_lr: float = field(default=5e-4, metadata={"help": "the multi-image phase's learning rate (constant after warmup_steps)"})

    def __post_init__(self) -> None:
        from .models import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        if self.vision_warmup_steps < 0 or self.vision_warmup_batch_size < 1 or self.vision_warmup_lr <= 0:
            raise ValueError("base_model.vision_warmup_steps must be >= 0, vision_warmup_batch_size >= 1 and vision_warmup_lr > 0")
        if self.multi_phase_steps < 0 or self.multi_phase_lr <= 0 or (self.multi_phase_steps and not self.multi_phase_tasks):
            raise ValueError(f"base_model.multi_phase_steps ({self.multi_phase_steps}) must be >= 0, multi_phase_lr ({self.multi_phase_lr}) > 0, and a multi-image phase needs multi_phase_tasks")
        from .world.tasks import CURRICULUM_TASKS

        wrong = [t for t in self.multi_phase_tasks if t not in CURRICULUM_TASKS or t in self.train_tasks]
        if wrong:  # a MIG-Bench task would train the base on the benchmark; a train task would be counted twice
            raise ValueError(f"base_model.multi_phase_tasks {wrong}: must be curriculum tasks ({sorted(CURRICULUM_TASKS)}) not in train_tasks")
        counts = ("language_phase_steps", "language_phase_texts", "language_phase_reasoning", "language_phase_words_before_box", "language_phase_grounding_span")
        negative = [f"base_model.{name} ({getattr(self, name)})" for name in counts if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)}: must be >= 0")
        if not 0 <= self.language_phase_json_boxes <= 1:
            raise ValueError(f"base_model.language_phase_json_boxes ({self.language_phase_json_boxes}): must be in [0, 1]")
        if self.language_phase_lr <= 0:
            raise ValueError(f"base_model.language_phase_lr ({self.language_phase_lr}): must be > 0")
        if self.grounding_attention_weight < 0 or self.grounding_attention_span < 0 or (self.grounding_attention_weight and not self.grounding_attention_layers):
            raise ValueError("base_model.grounding_attention_weight and grounding_attention_span must be >= 0 and, with a weight, grounding_attention_layers must name a layer")
        depth = PRESETS[self.preset].num_hidden_layers
        for name in ("grounding_attention_layers", "expression_attention_layers", "language_phase_expression_layers"):
            if any(not -depth <= i < depth for i in getattr(self, name)):
                raise ValueError(f"base_model.{name} {getattr(self, name)}: preset {self.preset!r} has {depth} layers")


@dataclass
class BaseModelResult:
    path: Path
    source: str  # real | shipped | trained
    seconds: float
    skipped: bool = False


BASE_POOL_ITEMS = 300  # the pool items of each MIG-Bench task the base reads at most (its tokenizer's corpus)


def tokenizer_pool(pool: list[Item], train_tasks: list[str], per_task: int = BASE_POOL_ITEMS) -> list[Item]:
    """The pool items the tokenizer reads: the first ``per_task`` of each MIG-Bench task's (0: all) and every item of the
    other tasks, but the curriculum tasks the first phase does not train on (a world that adds the multi-image
    phase's items builds the same tokenizer, so the grounding phase it starts from is the same; a world with a
    larger pool for the later stages builds the same base: :func:`world_digest`)."""
    from .formats import MIG_TASKS
    from .items import first_per_task
    from .world.tasks import CURRICULUM_TASKS

    read = [it for it in pool if it.task not in CURRICULUM_TASKS or it.task in train_tasks]
    capped = set(map(id, first_per_task(read, list(MIG_TASKS), per_task)))
    return [it for it in read if it.task not in MIG_TASKS or id(it) in capped]


def tokenizer_corpus(pool: list[Item], n_teacher: int = 400, seed: int = 0) -> list[str]:
    """Texts the tokenizer learns from: the pool's questions and answers and the teacher's reasoning in
    every style, so that later stages' words are whole tokens too."""
    from .prompts import MIGICIAN_SUFFIX, MIRG_SUFFIX, ZHANG_SUFFIX
    from .teacher import STYLES, ScriptedTeacher, TeacherItem

    texts = [it.question for it in pool] + [it.reference or "" for it in pool] + [ZHANG_SUFFIX, MIRG_SUFFIX, MIGICIAN_SUFFIX]
    with_scene = [it for it in pool if it.scene is not None]
    rng = random.Random(seed)
    sample = rng.sample(with_scene, min(n_teacher, len(with_scene)))
    teacher = ScriptedTeacher(error_rate=0.2, seed=seed)
    for style in STYLES:
        for replies in teacher.answer([TeacherItem(i.id, i.task, i.images, i.question, i.scene) for i in sample], 1, style):
            texts.extend(replies)
    return texts


LANGUAGE_STYLES = {"zhang": "zhang", "mirg_text": "mirg", "mirg_bbox": "mirg", "answer": "plain"}  # teacher style -> prompt recipe


def _scripted_reply(teacher, item, style: str) -> tuple[str, str]:
    """(``item``'s question with the prompt of ``style``'s recipe, the scripted ``teacher``'s reply in ``style``)."""
    from .prompts import with_suffix

    return with_suffix(item.question, LANGUAGE_STYLES[style]), teacher.answer([item], 1, style)[0][0]


def language_texts(data_dir: str | Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` text-only (prompt, reply) pairs in the world's language, for the base to read as a pretrained VLM
    has read text: every task's question (the ten MIG-Bench tasks and single-image referring, in turn) with a
    recipe's prompt, answered by the scripted teacher (no errors) in each style (``LANGUAGE_STYLES``, in
    turn). The scenes are drawn with the world's knobs (from ``data_dir``'s manifest) and seeds of the split
    ``language``, which no stage uses. Without the images a reply's content cannot be learnt from its
    question; its words and form can."""
    from .formats import MIG_TASKS
    from .teacher import ScriptedTeacher, TeacherItem
    from .world import SINGLE_TASK, DataConfig, generate
    from .world.build import sample_seed, scene_row

    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    data_cfg = DataConfig(**manifest["config"])
    knobs, tasks, styles = data_cfg.knobs(), [*MIG_TASKS, SINGLE_TASK], list(LANGUAGE_STYLES)
    teacher = ScriptedTeacher(error_rate=0.0, seed=seed)
    out = []
    for i in range(n):
        task, style = tasks[i % len(tasks)], styles[(i // len(tasks)) % len(styles)]
        sample = generate(task, sample_seed(data_cfg.seed, "language", task, i), knobs)
        item = TeacherItem(f"language-{task}-{i}", task, [], sample.question, scene_row(f"language-{task}-{i}", "language", i, sample))
        out.append(_scripted_reply(teacher, item, style))
    return out


REASONING_STYLES = ("zhang", "mirg_text", "mirg_bbox")


def reasoning_items(items: list[Item], n: int, seed: int = 0) -> tuple[list[Item], list[str], list[str]]:
    """The first ``n`` single-image referring ``items`` (with a scene), each with a recipe's prompt (the
    question with its suffix) and the error-free scripted teacher's reply in that recipe's reasoning style
    (``REASONING_STYLES`` in turn): (items, prompts, replies)."""
    from .teacher import ScriptedTeacher, TeacherItem
    from .world import SINGLE_TASK

    chosen = [it for it in items if it.task == SINGLE_TASK and it.scene is not None][:n]
    teacher = ScriptedTeacher(error_rate=0.0, seed=seed)
    pairs = [_scripted_reply(teacher, TeacherItem(it.id, it.task, it.images, it.question, it.scene), REASONING_STYLES[i % len(REASONING_STYLES)]) for i, it in enumerate(chosen)]
    return chosen, [p for p, _ in pairs], [r for _, r in pairs]


def words_before_box(items: list[Item], answers: list[str], max_words: int, texts: list[tuple[str, str]], seed: int = 0) -> tuple[list[str], list[bool]]:
    """``answers`` with, on 3 in 4 single-image referring items, 1 to ``max_words`` words drawn from the
    replies of ``texts`` (the world's language: their runs of lowercase letters, so also fragments of
    capitalised words and the names inside the markup; noise that reads like the world is all the prefix
    needs) put before the box; and for each item whether its
    grounding-attention loss looks from its box (every single-image referring item: the box may start
    anywhere). Seeded."""
    vocabulary = sorted({w for _, reply in texts for w in re.findall(r"[a-z]+", reply)})
    if max_words and not vocabulary:
        raise ValueError("words_before_box: the language texts have no words to draw from")
    rng = random.Random(seed)
    out, at_box = [], []
    for it, answer in zip(items, answers, strict=True):
        refer = it.task in REFER_TASKS
        if refer and max_words and rng.random() < 0.75:
            answer = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, max_words))) + " " + answer
        out.append(answer)
        at_box.append(refer)
    return out, at_box


def json_boxes(items: list[Item], answers: list[str], share: float, seed: int = 0) -> list[str]:
    """``answers`` with the box of about ``share`` of the single-image referring items written in JSON, as
    Qwen2.5-VL writes boxes and Zhang et al.'s answers end (``teacher.json_box``, labelled with the
    expression), same numbers (words before the box stay before it). Other answers are left as they are.
    Seeded, and drawn apart from :func:`words_before_box`'s choices."""
    from .parsing import BOX_TOKEN_RE
    from .teacher import json_box

    rng = random.Random(f"json-boxes-{seed}")
    out = []
    for it, answer in zip(items, answers, strict=True):
        box = BOX_TOKEN_RE.search(answer) if it.task in REFER_TASKS else None
        if box and share and rng.random() < share:
            named = re.search(r"<\|object_ref_start\|>(?:the )?(.*?)<\|object_ref_end\|>", it.question)
            vals = [int(g) if g.isdigit() else float(g) for g in box.groups()]
            answer = answer[: box.start()] + json_box(vals, named.group(1) if named else "object") + answer[box.end() :]
        out.append(answer)
    return out


ATTRIBUTES = ("shape", "colour", "pattern", "size")
CORNERS = ("x1", "y1", "x2", "y2")  # the dense warm-up's box targets, in patches


def single_image_scene_items(items: list[Item]) -> list[Item]:
    """Items of one image whose objects the embedded world's scene lists."""
    return [it for it in items if it.scene is not None and len(it.images) == 1]


def _attribute_classes() -> dict[str, list[str]]:
    from .world.objects import COLOURS, PATTERNS, SHAPES, SIZES

    return {a: list(values) for a, values in zip(ATTRIBUTES, (SHAPES, COLOURS, PATTERNS, SIZES), strict=True)}


class WordAlignedLogits(torch.nn.Module):
    """A classifier whose class vectors are the language model's own input embeddings of the class words
    (shared and trained with it), plus learnt vectors for classes with no word (``none``): logits are
    cosine similarities times a learnt scale. Vision tokens trained this way point where the words of their
    attributes point in the language model's input space, as a CLIP-trained tower's do for a real VLM."""

    def __init__(self, embed: torch.nn.Embedding, word_ids: list[int], n_extra: int = 0):
        super().__init__()
        self.embed = embed
        self.register_buffer("word_ids", torch.tensor(word_ids, dtype=torch.long), persistent=False)
        self.extra = torch.nn.Parameter(torch.randn(n_extra, embed.embedding_dim) * 0.02)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.3))  # e^2.3 ~ 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.cat([self.embed.weight[self.word_ids], self.extra.to(self.embed.weight.dtype)])
        return self.log_scale.exp() * torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(w, dim=-1).T


def attribute_word_ids(tokenizer, classes: dict[str, list[str]]) -> dict[str, list[int]]:
    """The token of each attribute value's word as the world writes it in a sentence (" red", " medium" of
    " medium-sized"), for :class:`WordAlignedLogits`; ``none`` has no word. Each must be one token of its own
    (the embedded tokenizer's vocabulary makes them so from preset tiny up); an error names the first that is not."""
    from .world.objects import SIZE_WORDS

    ids: dict[str, list[int]] = {}
    for a, values in classes.items():
        ids[a] = []
        for v in values:
            if v == "none":
                continue
            word = " " + (SIZE_WORDS.get(v, v) if a == "size" else v).split("-")[0]
            got = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(got) != 1:
                raise ValueError(f"base_model.vision_warmup_word_aligned: the {a} word {word.strip()!r} is {len(got)} tokens of this tokenizer, not one; a larger vocabulary (preset) is needed")
            ids[a] += got
    flat = [i for v in ids.values() for i in v]
    if len(set(flat)) != len(flat):
        raise ValueError("base_model.vision_warmup_word_aligned: two attribute words are the same token")
    return ids


class AttributeHeads(torch.nn.Module):
    """The vision warm-up's model: the vision tower with linear heads on every merged token (raster order, as
    the tower emits them). A token names the attributes of the object whose box centre lies in its cell (the
    largest, if several; ``none`` if no centre does), that object's box corners in patches (0 .. grid side),
    and its own row and column: object-centric tokens that carry where they are. ``labels`` is one row per
    token, -100 where a target does not apply; ``targets`` names its columns."""

    targets = ATTRIBUTES + CORNERS + ("row", "col")

    def __init__(self, visual: torch.nn.Module, dim: int, side: int, words: tuple[torch.nn.Embedding, Any] | None = None):
        """``side``: the largest image side in patches; ``words``: (the language model's input embeddings, its
        tokenizer): attribute heads are :class:`WordAlignedLogits` on those embeddings instead of free linear heads."""
        super().__init__()
        self.visual = visual
        self.classes = {a: [*c, "none"] for a, c in _attribute_classes().items()}
        sizes = {**{a: len(c) for a, c in self.classes.items()}, **dict.fromkeys(CORNERS, side + 1), "row": side, "col": side}
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(dim, sizes[t]) for t in self.targets})
        if words is not None:
            embed, tokenizer = words
            for a, ids in attribute_word_ids(tokenizer, self.classes).items():
                self.heads[a] = WordAlignedLogits(embed, ids, len(self.classes[a]) - len(ids))
        self.merge = visual.spatial_merge_size
        self.side = side

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.target_logits(pixel_values, image_grid_thw)
        out = {"logits": torch.cat(logits, -1)}
        if labels is not None:
            out["loss"] = sum(torch.nn.functional.cross_entropy(lg, labels[:, i], ignore_index=-100) for i, lg in enumerate(logits))
        return out

    def labels(self, scene: dict[str, Any], grid_thw: torch.Tensor) -> torch.Tensor:
        _, h, w = (int(v) for v in grid_thw.reshape(-1))
        if max(h, w) > self.side:
            raise ValueError(f"an image of {h} x {w} patches is larger than the warm-up's {self.side}")
        rows, cols = h // self.merge, w // self.merge
        image = scene["images"][0]
        iw, ih = image["size"]
        lab = torch.full((rows * cols, len(self.targets)), -100, dtype=torch.long)
        lab[:, :4] = torch.tensor([len(self.classes[a]) - 1 for a in ATTRIBUTES])  # none
        lab[:, 8] = torch.arange(rows * cols) // cols
        lab[:, 9] = torch.arange(rows * cols) % cols
        for k, cell in object_cells(image, rows, cols).items():
            obj = image["objects"][k]
            x1, y1, x2, y2 = obj["box"]
            lab[cell, :4] = torch.tensor([self.classes[a].index(obj[a]) for a in ATTRIBUTES])
            corners = (x1 / iw * w, y1 / ih * h, x2 / iw * w, y2 / ih * h)
            lab[cell, 4:8] = torch.tensor([min(self.side, max(0, round(v))) for v in corners])
        return lab

    def target_logits(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.visual(pixel_values, grid_thw=image_grid_thw).pooler_output
        return [self.heads[t](tokens) for t in self.targets]

    def scored(self, labels: torch.Tensor, j: int) -> torch.Tensor:
        """Attributes and corners on the tokens that hold an object; row and column on every token."""
        return labels[:, j] >= 0 if j >= 8 else labels[:, 4] >= 0


def warm_up_vision(cfg: BaseModelConfig, model, processor, items: list[Item], work: Path, progress: bool = True) -> dict[str, float]:
    """Train ``model``'s vision tower alone for ``cfg.vision_warmup_steps``, as Qwen2-VL's tower comes pretrained
    before its language model sees it: every merged token of every single-image item of the embedded world
    learns its object and place (:class:`AttributeHeads`). Returns each target's accuracy (%) on those
    training items."""
    from transformers import Trainer, TrainingArguments

    from .trainers import JsonlLogCallback, common_args

    chosen = single_image_scene_items(items)
    if not chosen:
        raise ValueError("base_model.vision_warmup_steps needs single-image items of the embedded world (with scenes)")
    encoded = [processor.image_processor([Image.open(it.images[0]).convert("RGB")], return_tensors="pt") for it in chosen]
    dim = model.config.text_config.hidden_size  # the merger's width
    words = (model.get_input_embeddings(), processor.tokenizer) if cfg.vision_warmup_word_aligned else None
    net = AttributeHeads(model.model.visual, dim, max(int(v) for e in encoded for v in e["image_grid_thw"][0, 1:]), words)
    examples = [{"pixel_values": e["pixel_values"], "image_grid_thw": e["image_grid_thw"], "labels": net.labels(it.scene, e["image_grid_thw"])} for it, e in zip(chosen, encoded, strict=True)]

    def collate(batch):
        return {k: torch.cat([e[k] for e in batch]) for k in ("pixel_values", "image_grid_thw", "labels")}

    args = TrainingArguments(
        output_dir=str(work),
        max_steps=cfg.vision_warmup_steps,
        per_device_train_batch_size=cfg.vision_warmup_batch_size,
        learning_rate=cfg.vision_warmup_lr,
        warmup_steps=min(50, cfg.vision_warmup_steps // 10),
        lr_scheduler_type="constant_with_warmup",
        weight_decay=0.01,
        max_grad_norm=1.0,
        adam_beta2=0.98,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        **{**common_args(cfg, None), "save_strategy": "no"},
    )
    log = JsonlLogCallback(work.parent / "vision_warmup_log.jsonl")
    Trainer(model=net, args=args, train_dataset=examples, data_collator=collate, callbacks=[log.callback]).train()
    shutil.rmtree(work, ignore_errors=True)  # nothing kept: the warmed tower lives on in ``model``
    net.eval()
    right, total = torch.zeros(len(net.targets)), torch.zeros(len(net.targets))
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            batch = collate(examples[i : i + 64])
            logits = net.target_logits(batch["pixel_values"], batch["image_grid_thw"])
            for j, lg in enumerate(logits):
                keep = net.scored(batch["labels"], j)
                right[j] += float((lg.argmax(-1) == batch["labels"][:, j])[keep].sum())
                total[j] += float(keep.sum())
    model.train()
    return {t: round(100.0 * float(right[j]) / max(1.0, float(total[j])), 1) for j, t in enumerate(net.targets)}


WARMUP_FIELDS = ("arch", "preset", "image_max_pixels", "train_tasks", "seed")  # and every vision_warmup_* field


def warmup_digest(cfg: BaseModelConfig, data_dir: Path) -> str:
    """What the warm-up's outcome depends on: the fields that build the model and pick its items, the
    warm-up's own fields, and the world (its data config digest)."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k in WARMUP_FIELDS or k.startswith("vision_warmup")}
    return versioned_digest({"world": world_digest(data_dir) or str(Path(data_dir).resolve()), **values})


def world_digest(data_dir: str | Path) -> str | None:
    """The digest of the world in ``data_dir`` (its ``manifest.json``) as the base reads it; None when it has none."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    m = json.loads(manifest.read_text())
    return base_world(m["config"]) if "config" in m else m.get("config_hash")


def base_world(config: dict[str, Any]) -> str:
    """The digest of a world's data config (``dataclasses.asdict`` of a ``DataConfig``) as the base reads it:
    at most :data:`BASE_POOL_ITEMS` pool items of each MIG-Bench task (:func:`tokenizer_pool`), so that a
    larger pool for the later stages leaves the base, and its stamps, as they are. With that many or fewer it
    is the world's own config digest."""
    return versioned_digest({**config, "n_train_per_task": min(config["n_train_per_task"], BASE_POOL_ITEMS)})


def warm_up_cached(cfg: BaseModelConfig, model, processor, items: list[Item], data_dir: Path, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """:func:`warm_up_vision`, or its saved outcome: the warmed model's weights are kept in
    ``out_dir/vision_warmup_weights`` under :func:`warmup_digest`, so that a change to the language model's
    training alone (steps, schedule, losses) restarts it without warming the tower up again. Returns the
    warm-up's record (steps, training accuracies, seconds, and ``reused`` when loaded)."""
    from safetensors.torch import load_model, save_model

    from .trainers import stamp_matches

    cache, wdigest = out_dir / "vision_warmup_weights", warmup_digest(cfg, data_dir)
    if stamp_matches(cache, wdigest):
        load_model(model, str(cache / "model.safetensors"), strict=True)
        return {**json.loads((cache / "mirg.json").read_text())["record"], "reused": True}
    t1 = time.perf_counter()
    acc = warm_up_vision(cfg, model, processor, items, out_dir / "vision_warmup", progress)
    record = {"steps": cfg.vision_warmup_steps, "train_accuracy": acc, "seconds": round(time.perf_counter() - t1, 1)}
    with atomic_dir(cache) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        write_json(tmp / "mirg.json", {"config_hash": wdigest, "record": record})
    return record


def _check_shipped(path: Path) -> dict[str, Any]:
    meta_file = path / "mirg.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"shipped checkpoint {path} has no mirg.json (params, metrics, checksum)")
    meta = json.loads(meta_file.read_text())
    want = meta.get("sha256")
    got = sha256_tree(path, exclude=frozenset({"mirg.json"}))
    if want != got:
        raise ValueError(f"shipped checkpoint {path}: checksum {got} does not match the recorded {want}")
    return meta


def _warn_other_world(meta: dict[str, Any], data_dir: Path) -> None:
    """A shipped base was trained on one world (its pixel statistics and tokenizer come from it); say so
    when the params now build another."""
    trained_on, now = (meta.get("data") or {}).get("config_hash"), world_digest(data_dir)
    if trained_on and now is not None:
        if now != trained_on:
            warnings.warn(
                f"the shipped base was trained on the world with data config {trained_on}, the params build {now}: "
                "its tokenizer and pixel statistics come from the other world (set base_model.shipped: '' to train one)",
                stacklevel=3,
            )


def ship_checkpoint(src: str | Path, dest: str | Path, metrics: dict[str, Any], data_dir: str | Path) -> dict[str, Any]:
    """Copy a trained base checkpoint to ``dest`` (e.g. a folder committed to the repository) with its
    params, the world it was trained on, its measured ``metrics`` and a checksum in ``mirg.json``, so that
    ``base_model.shipped: <dest>`` starts from it as a user starts from a downloaded base."""
    src, dest = Path(src), Path(dest)
    meta = _check_shipped(src)
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    meta = {
        **meta,
        "metrics": metrics,
        "data": {"config_hash": base_world(manifest["config"]), "images_sha256": manifest.get("images_sha256"), "config": manifest["config"]},
        "shipped_on": time.strftime("%Y-%m-%d"),
    }
    with atomic_dir(dest) as tmp:
        for p in src.iterdir():
            if p.is_file() and p.name != "mirg.json":
                shutil.copy2(p, tmp / p.name)
        meta["sha256"] = sha256_tree(tmp)
        write_json(tmp / "mirg.json", meta)
    return meta


def grounding_config(cfg: BaseModelConfig) -> dict[str, Any]:
    """The settings the grounding phase depends on: every field but the later phases', whose changes alone
    restart from the grounded checkpoint."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith(("language_phase_", "multi_phase_"))}


def _with_world(values: dict[str, Any], world: str | None) -> str:
    return versioned_digest({**values, **({"world": world} if world else {})})


def grounding_digest(cfg: BaseModelConfig, world: str | None = None) -> str:
    """What the grounding phase's checkpoint depends on: :func:`grounding_config` and the world it reads
    (``world``: its data config digest, :func:`world_digest`)."""
    return _with_world(grounding_config(cfg), world)


def language_digest(cfg: BaseModelConfig, world: str | None = None) -> str:
    """What the language phase's checkpoint depends on: every field but the multi-image phase's, and the world."""
    return _with_world({k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith("multi_phase_")}, world)


def base_digest(cfg: BaseModelConfig, world: str | None = None) -> str:
    """What the trained base depends on: every field and the world; the final checkpoint's stamp."""
    return _with_world(dataclasses.asdict(cfg), world)


def run_base_model(cfg: BaseModelConfig, data_dir: str | Path, out_dir: str | Path, progress: bool = True) -> BaseModelResult:
    """The stage. Returns where the base checkpoint is: ``out_dir/checkpoint``. The phases run in turn: the
    grounding phase (``train_log.jsonl``), the language phase (``language_log.jsonl``), the multi-image phase
    (``multi_log.jsonl``); each but the last keeps its checkpoint (``grounded/``, ``languaged/``) under a
    digest of the settings it depends on, so a change to a later phase alone starts from it."""
    out_dir = Path(out_dir)
    if cfg.model_name_or_path:
        path = Path(cfg.model_name_or_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"base_model.model_name_or_path: no checkpoint at {path}")
        return BaseModelResult(path, "real", 0.0, skipped=True)
    if cfg.shipped:
        path = (ROOT / cfg.shipped).resolve()
        meta = _check_shipped(path)
        _warn_other_world(meta, Path(data_dir))
        return BaseModelResult(path, "shipped", 0.0, skipped=True)

    final, world = out_dir / "checkpoint", world_digest(data_dir)
    if stamp_matches(final, base_digest(cfg, world)):
        return BaseModelResult(final, "trained", 0.0, skipped=True)
    # the phases in turn, each into its own folder under its own digest (of its settings and the world): a change
    # to a later phase alone starts from the checkpoint before it
    phases = [("grounded", grounding_digest(cfg, world), None)]
    if cfg.language_phase_steps:
        phases.append(("languaged", language_digest(cfg, world), _language_phase))
    if cfg.multi_phase_steps:
        _multi_items(cfg, Path(data_dir))  # a world without its items fails now, not after the phases before it
        phases.append(("multi", base_digest(cfg, world), _multi_phase))
    # start after the last kept checkpoint whose digest matches (a later phase's alone is enough)
    done = max((i for i, (name, digest, _) in enumerate(phases[:-1]) if stamp_matches(out_dir / name, digest)), default=-1)
    seconds, previous = 0.0, (out_dir / phases[done][0] if done >= 0 else None)
    for i, (name, digest, run) in enumerate(phases):
        dest = final if i == len(phases) - 1 else out_dir / name
        if i <= done:
            continue
        if run is None:
            seconds += _grounding_phase(cfg, base_digest(cfg, world) if dest == final else digest, Path(data_dir), out_dir, dest, progress)
        else:
            seconds += run(cfg, Path(data_dir), out_dir, previous, dest, progress, base_digest(cfg, world) if dest == final else digest)
        previous = dest
    return BaseModelResult(final, "trained", seconds)


def _training_items(cfg: BaseModelConfig, data_dir: Path) -> tuple[list[Item], list[Item]]:
    """(the training pool, its items of ``train_tasks``)."""
    pool = load_pool_items(data_dir / "train" / "mgrounding.json")
    train = [it for it in pool if it.task in cfg.train_tasks]
    if not train:
        raise ValueError(f"base_model.train_tasks {cfg.train_tasks}: no such items in {data_dir}")
    return pool, train


def _training_args(cfg: BaseModelConfig, work: Path, progress: bool, **kw: Any):
    from transformers import TrainingArguments

    from .trainers import common_args

    base = {
        "output_dir": str(work),
        "per_device_train_batch_size": cfg.batch_size,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": 1.0,
        "adam_beta2": 0.98,
        "save_total_limit": cfg.keep_checkpoints,
        "dataloader_num_workers": 0,
        "disable_tqdm": not progress,
        **common_args(cfg, None),
    }
    return TrainingArguments(**{**base, **kw})


def _train(cfg: BaseModelConfig, model, processor, dataset: PrecomputedVL, args, log_file: Path, digest: str, grouped: bool):
    """Train ``model`` (resuming an interrupted run of the same ``digest`` in ``args.output_dir``); raise on a
    non-finite loss. Returns the trainer."""
    from .trainers import JsonlLogCallback, train_resuming

    log = JsonlLogCallback(log_file)
    collator = CompletionCollator(processor.tokenizer.pad_token_id, model.config.image_token_id, cfg.grounding_attention_span)
    # processing_class: every intermediate checkpoint is a complete folder that evaluation can load
    parts = {"model": model, "args": args, "train_dataset": dataset, "data_collator": collator, "processing_class": processor, "callbacks": [log.callback]}
    trainer = grounding_trainer(cfg.grounding_attention_weight, cfg.grounding_attention_layers, cfg.expression_attention_layers, **parts)
    if grouped:  # the language phase's batches grouped by length; the grounding phase's drawn at random
        length_grouped(trainer, dataset)
    train_resuming(trainer, Path(args.output_dir), digest)
    nan = [row for row in _read_log(log_file) if row.get("loss") is None and "loss" in row]
    if nan:
        raise FloatingPointError(f"base-model training produced a non-finite loss at step {nan[0]['step']} ({log_file}); lower learning_rate or use float32")
    return trainer


def _save_base(trainer, processor, dest: Path, meta: dict[str, Any]) -> None:
    """Write the trained model to ``dest`` (atomically) with ``meta`` and its checksum in ``mirg.json``, then
    remove the trainer's working folder."""
    from .models import save_checkpoint

    with atomic_dir(dest) as tmp:
        save_checkpoint(trainer.model, processor, tmp)
        write_json(tmp / "mirg.json", {**meta, "sha256": sha256_tree(tmp)})
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def _grounding_phase(cfg: BaseModelConfig, digest: str, data_dir: Path, out_dir: Path, dest: Path, progress: bool) -> float:
    """Build the small model and train it from scratch (``max_steps``) into ``dest``, stamped ``digest``;
    returns the seconds."""
    from .models import count_parameters, create_small_model, pixel_stats
    from .trainers import last_checkpoint

    t0 = time.perf_counter()
    pool, train = _training_items(cfg, data_dir)
    mean, std = pixel_stats(p for it in train for p in it.images)  # as a pretrained checkpoint carries its data's statistics
    model, processor = create_small_model(cfg.preset, tokenizer_corpus(tokenizer_pool(pool, cfg.train_tasks), seed=cfg.seed), cfg.arch, cfg.seed, cfg.image_max_pixels, mean, std)
    dataset = PrecomputedVL(train, processor, [it.reference or "" for it in train], grounding=cfg.grounding_attention_weight > 0)
    work = out_dir / "trainer"
    if cfg.vision_warmup_steps and last_checkpoint(work, digest) is None:  # a resumed run's checkpoint holds the warmed tower
        record = warm_up_cached(cfg, model, processor, train, data_dir, out_dir, progress)
        write_json(out_dir / "vision_warmup.json", {"config_hash": digest, **record})
    args = _training_args(cfg, work, progress, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type)
    trainer = _train(cfg, model, processor, dataset, args, out_dir / "train_log.jsonl", digest, grouped=False)
    seconds = time.perf_counter() - t0
    meta = {
        "config": grounding_config(cfg) if cfg.language_phase_steps or cfg.multi_phase_steps else dataclasses.asdict(cfg),
        "config_hash": digest,
        "parameters": count_parameters(trainer.model),
        "train_items": len(train),
        "seconds": round(seconds, 1),
        "device": device_name(),
    }
    if cfg.vision_warmup_steps and (out_dir / "vision_warmup.json").is_file():
        meta["vision_warmup"] = json.loads((out_dir / "vision_warmup.json").read_text())
    _save_base(trainer, processor, dest, meta)
    return seconds


def _language_phase(cfg: BaseModelConfig, data_dir: Path, out_dir: Path, grounded: Path, dest: Path, progress: bool, digest: str) -> float:
    """``language_phase_steps`` more steps from the grounded checkpoint over the image items and the language
    texts (lengths grouped, constant lr after the warm-up) into ``dest`` (stamped ``digest``), whose ``mirg.json``
    records both phases; returns the seconds."""
    from .models import load_model, load_processor

    t0 = time.perf_counter()
    _, train = _training_items(cfg, data_dir)
    processor, model = load_processor(grounded), load_model(grounded, dtype=torch.float32)
    texts = language_texts(data_dir, cfg.language_phase_texts, cfg.seed)
    reasoning, prompts, replies = reasoning_items(train, cfg.language_phase_reasoning, cfg.seed) if cfg.language_phase_reasoning else ([], [], [])
    answers = [it.reference or "" for it in train]
    if cfg.language_phase_words_before_box:
        answers, _ = words_before_box(train, answers, cfg.language_phase_words_before_box, texts, cfg.seed)
    prefixed = sum(a != (it.reference or "") for a, it in zip(answers, train, strict=True))
    if cfg.language_phase_json_boxes:
        answers = json_boxes(train, answers, cfg.language_phase_json_boxes, cfg.seed)
    # a referring box that may not come first (words before it, or another notation) is grounded from where it starts
    moved = bool(cfg.language_phase_words_before_box or cfg.language_phase_json_boxes)
    at_box = [moved and it.task in REFER_TASKS for it in train]
    dataset = PrecomputedVL(
        train + reasoning,
        processor,
        answers + replies,
        grounding=cfg.grounding_attention_weight > 0,
        texts=texts,
        prompts=[it.question for it in train] + prompts,
        ground_at_box=at_box + [True] * len(reasoning),
    )
    work = out_dir / "language_trainer"
    args = _training_args(cfg, work, progress, max_steps=cfg.language_phase_steps, learning_rate=cfg.language_phase_lr, lr_scheduler_type="constant_with_warmup")
    phase = dataclasses.replace(  # the trainer's grounding terms in this phase (the digest stays the whole config's)
        cfg,
        grounding_attention_span=cfg.language_phase_grounding_span or cfg.grounding_attention_span,
        expression_attention_layers=cfg.language_phase_expression_layers or cfg.expression_attention_layers,
    )
    trainer = _train(phase, model, processor, dataset, args, out_dir / "language_log.jsonl", digest, grouped=True)
    seconds = time.perf_counter() - t0
    first = json.loads((grounded / "mirg.json").read_text())
    meta = _phase_meta(
        first, cfg, digest, seconds,
        language_phase={"steps": cfg.language_phase_steps, "texts": len(texts), "reasoning_items": len(reasoning), "words_before_box": prefixed, "json_boxes": sum("bbox_2d" in a for a in answers), "seconds": round(seconds, 1), "device": device_name()},
        grounding_phase={k: first[k] for k in ("config_hash", "seconds", "device", "sha256") if k in first},
    )
    _save_base(trainer, processor, dest, meta)
    return seconds


def _phase_meta(before: dict[str, Any], cfg: BaseModelConfig, digest: str, seconds: float, **records: Any) -> dict[str, Any]:
    """A later phase's ``mirg.json``: the one it started from (``before``, less its checksum) with this phase's
    config, digest and ``records``, the seconds of every phase so far and this device."""
    return {
        **{k: v for k, v in before.items() if k != "sha256"},
        "config": dataclasses.asdict(cfg),
        "config_hash": digest,
        **records,
        "seconds": round(before.get("seconds", 0.0) + seconds, 1),
        "device": device_name(),
    }


def _multi_items(cfg: BaseModelConfig, data_dir: Path) -> tuple[list[Item], list[Item]]:
    """(the pool's items of ``multi_phase_tasks``, its items of ``train_tasks``); an error names the tasks the
    world lacks."""
    pool, single = _training_items(cfg, data_dir)
    multi = [it for it in pool if it.task in cfg.multi_phase_tasks]
    missing = sorted(set(cfg.multi_phase_tasks) - {it.task for it in multi})
    if missing:
        raise ValueError(f"base_model.multi_phase_tasks {missing}: no such items in {data_dir / 'train' / 'mgrounding.json'} (data.n_multi_refer_train, n_multi_describe_train?)")
    return multi, single


def _multi_phase(cfg: BaseModelConfig, data_dir: Path, out_dir: Path, start: Path, dest: Path, progress: bool, digest: str) -> float:
    """``multi_phase_steps`` more steps from ``start`` (the checkpoint of the phase before) over every pool item
    of ``multi_phase_tasks`` (the multi-image curriculum: an image named by its index, its object referred to or
    its objects read out) and as many of the ``train_tasks`` items (drawn with the seed, so the single-image
    skills stay), grounding-attention loss on every object named (:func:`mirg_lib.grounding.grounding_points`),
    constant lr after the warm-up, into ``dest`` stamped ``digest``; its ``mirg.json`` records every phase.
    Returns the seconds."""
    from .models import load_model, load_processor

    t0 = time.perf_counter()
    multi, single = _multi_items(cfg, data_dir)
    kept = random.Random(f"multi-phase-{cfg.seed}").sample(single, min(len(single), len(multi)))
    items = multi + kept
    processor, model = load_processor(start), load_model(start, dtype=torch.float32)
    dataset = PrecomputedVL(items, processor, [it.reference or "" for it in items], grounding=cfg.grounding_attention_weight > 0)
    args = _training_args(cfg, out_dir / "multi_trainer", progress, max_steps=cfg.multi_phase_steps, learning_rate=cfg.multi_phase_lr, lr_scheduler_type="constant_with_warmup")
    phase = dataclasses.replace(cfg, expression_attention_layers=cfg.language_phase_expression_layers or cfg.expression_attention_layers)
    trainer = _train(phase, model, processor, dataset, args, out_dir / "multi_log.jsonl", digest, grouped=False)
    seconds = time.perf_counter() - t0
    before = json.loads((start / "mirg.json").read_text())
    meta = _phase_meta(
        before, cfg, digest, seconds,
        train_items=before.get("train_items", 0) + len(multi),
        multi_phase={"steps": cfg.multi_phase_steps, "tasks": {t: sum(it.task == t for it in multi) for t in cfg.multi_phase_tasks}, "single_items": len(kept), "seconds": round(seconds, 1), "device": device_name(), "start": {"config_hash": before.get("config_hash"), "sha256": before.get("sha256")}},
    )
    _save_base(trainer, processor, dest, meta)
    return seconds


def _read_log(path: Path) -> list[dict[str, Any]]:
    return read_log(path) if path.is_file() else []
