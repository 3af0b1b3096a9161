"""Small Qwen2-VL / Qwen2.5-VL models built with transformers' own classes, and loading any checkpoint.

The embedded default cannot download Qwen2-VL-7B, so it builds a model of the same architecture at a
small size: transformers' ``Qwen2VLForConditionalGeneration`` (or ``Qwen2_5_VLForConditionalGeneration``)
with a tokenizer trained by ``tokenizers`` on the embedded corpus (byte-level BPE, digits split one by
one as Qwen's tokenizer does, Qwen's special tokens) and transformers' ``Qwen2VLProcessor``. It is saved
as an ordinary checkpoint folder (safetensors, config, tokenizer, processor, chat template) that
``from_pretrained`` loads, exactly as a real checkpoint folder is loaded: a real Qwen2-VL-7B-Instruct or
Qwen2.5-VL-7B-Instruct goes through :func:`load_model` and :func:`load_processor` unchanged.
``trust_remote_code`` is never used and nothing loads pickles (safetensors only).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Qwen2-VL's special tokens, in Qwen's order
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# tags of the two recipes: whole tokens for the small model (real Qwen spells them with BPE pieces)
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "<bbox_id>", "</bbox_id>"]

# Qwen2-VL's chat template (same rendering: system turn, <|vision_start|><|image_pad|><|vision_end|> per image)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ModelPreset:
    """Sizes of a small model. The vision tower keeps Qwen's patch 14, temporal patch 2, merge 2."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_embed_dim: int
    vision_depth: int
    vision_heads: int
    rope_theta: float = 10000.0
    vision_rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def mrope_section(self) -> list[int]:
        return mrope_section(self.head_dim)


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL splits each head's rotary half into (temporal, height, width) sections, 1:1.5:1.5."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


PRESETS: dict[str, ModelPreset] = {
    # unit tests: builds and runs a step in a fraction of a second
    "nano": ModelPreset(512, 64, 128, 2, 2, 1, 32, 1, 2),
    # the embedded base model on a CPU
    "tiny": ModelPreset(1024, 192, 512, 4, 4, 2, 128, 3, 4),
    # the same with rotary bases sized for a few hundred positions (an experiment: docs/log.md)
    "tiny-shortrope": ModelPreset(1024, 192, 512, 4, 4, 2, 128, 3, 4, rope_theta=100.0, vision_rope_theta=100.0),
    # the gpu profile
    "small": ModelPreset(2048, 384, 1024, 8, 6, 2, 256, 6, 4),
}


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer with digits split one by one and Qwen's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def pixel_stats(paths: Iterable[str | Path], limit: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (0-1) of up to ``limit`` images: the normalisation a
    small model trained on those images is given, as a pretrained checkpoint carries its data's."""
    import numpy as np
    from PIL import Image

    arrs = []
    for p in itertools.islice(paths, limit):
        with Image.open(p) as im:
            arrs.append(np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0)
    if not arrs:
        raise ValueError("pixel_stats: no images")
    flat = np.concatenate(arrs)
    return [round(float(v), 4) for v in flat.mean(0)], [round(max(float(v), 1e-3), 4) for v in flat.std(0)]


def build_processor(
    tokenizer,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
):
    """Qwen2-VL's processor; ``image_mean`` / ``image_std`` default to Qwen's (OpenAI CLIP's)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    norm = {}
    if image_mean is not None:
        norm["image_mean"] = list(image_mean)
    if image_std is not None:
        norm["image_std"] = list(image_std)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **norm)
    try:
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor()
    except ImportError:  # pragma: no cover - video support is optional in some builds
        video_processor = None
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def build_config(preset: ModelPreset, tokenizer, arch: str = "qwen2_vl"):
    """transformers' config for ``arch`` (``qwen2_vl`` or ``qwen2_5_vl``) at the preset's size."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": preset.hidden_size,
        "intermediate_size": preset.intermediate_size,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_attention_heads": preset.num_attention_heads,
        "num_key_value_heads": preset.num_key_value_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": preset.rope_theta, "mrope_section": preset.mrope_section()},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = {
            "depth": preset.vision_depth,
            "embed_dim": preset.vision_embed_dim,
            "hidden_size": preset.hidden_size,
            "num_heads": preset.vision_heads,
            "mlp_ratio": 4,
            "rope_parameters": {"rope_type": "axial", "rope_theta": preset.vision_rope_theta},
        }
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        depth = preset.vision_depth
        vision = {
            "depth": depth,
            "hidden_size": preset.vision_embed_dim,
            "intermediate_size": preset.vision_embed_dim * 3,
            "num_heads": preset.vision_heads,
            "out_hidden_size": preset.hidden_size,
            "window_size": 56,
            "fullatt_block_indexes": [depth - 1],
            "rope_parameters": {"rope_type": "axial", "rope_theta": preset.vision_rope_theta},
        }
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown architecture {arch!r}; expected qwen2_vl or qwen2_5_vl")


def model_class(arch: str):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    try:
        return {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected qwen2_vl or qwen2_5_vl") from None


def create_small_model(
    preset: str | ModelPreset,
    corpus: Iterable[str],
    arch: str = "qwen2_vl",
    seed: int = 0,
    image_max_pixels: int = 28 * 28 * 64,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
):
    """A freshly initialised small model and its processor (tokenizer trained on ``corpus``).

    ``image_mean`` / ``image_std``: the pixel normalisation (see :func:`pixel_stats`). With Qwen's CLIP
    defaults the embedded world's light backgrounds sit far from zero and every image looks alike to an
    untrained vision tower (measured: docs/log.md)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    tokenizer = train_tokenizer(corpus, p.vocab_size)
    processor = build_processor(tokenizer, max_pixels=image_max_pixels, image_mean=image_mean, image_std=image_std)
    torch.manual_seed(seed)
    model = model_class(arch)(build_config(p, tokenizer, arch))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model, processor


def architecture_of(path: str | Path) -> str:
    cfg = json.loads((Path(path) / "config.json").read_text())
    mt = cfg.get("model_type")
    if mt not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"{path}: model_type {mt!r} is not Qwen2-VL or Qwen2.5-VL")
    return mt


def load_model(path: str | Path, dtype: torch.dtype | str = "auto", device: str | None = None, **kwargs: Any):
    """A local checkpoint folder (ours or a real Qwen2-VL / Qwen2.5-VL), safetensors only."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (config.json missing); real models come from a local folder")
    cls = model_class(architecture_of(path))
    model = cls.from_pretrained(str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False, **kwargs)
    if device:
        model.to(device)
    return model


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    from transformers import AutoProcessor

    kwargs = {}
    if min_pixels is not None:
        kwargs["min_pixels"] = min_pixels
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    proc = AutoProcessor.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    if proc.tokenizer.pad_token is None:
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    return proc


def save_checkpoint(model, processor, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save as an ordinary checkpoint folder (safetensors + config + processor)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    processor.save_pretrained(str(path))
    if extra:
        (path / "mirg.json").write_text(json.dumps(extra, indent=1, default=str) + "\n")
    return path


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}" or n.startswith("visual") or "model.visual" in n)
    return {"total": total, "vision": vision, "language": total - vision}



# LoRA on the language model only. Qwen2.5-VL's vision MLP also has gate_proj/up_proj/down_proj, so
# targets given by bare name would hit the vision tower too: the regex anchors them to the LLM.
LANGUAGE_LORA_TARGETS = r"^(?:base_model\.model\.)?model\.language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)$"


def lora_config(r: int = 64, alpha: int = 128, dropout: float = 0.05):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LANGUAGE_LORA_TARGETS, task_type="CAUSAL_LM", bias="none")


def lora_modules(model) -> list[str]:
    """Names of the modules that carry LoRA weights (to check none is in the vision tower)."""
    return sorted({n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n})
