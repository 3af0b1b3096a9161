"""Generation backends: one setting (section ``generation``) for every stage that samples a model.

The CoT teacher (``cot.teacher: model``), rejection sampling and the evaluation all hand their questions to
:func:`generate`, which runs them on one of three backends:

* ``hf``     -- transformers' batched ``generate`` in this process (:mod:`mirg_lib.generation`): left-padded
  batches, KV cache; with ``launch.num_processes`` above 1 (and the stage in ``launch.stages``) the batches are
  shared out over ``accelerate launch`` processes, one model per process, and gathered in order.
* ``openai`` -- any OpenAI-compatible ``/v1/chat/completions`` server (``vllm serve``, SGLang,
  ``transformers serve``, a hosted model): images as base64 PNG data URLs, ``concurrency`` requests in
  flight, retries with exponential backoff on dropped connections, time-outs, HTTP 408/429/5xx and replies
  that are not JSON; never a redirect (the API key would follow it).
* ``vllm``   -- vLLM's offline engine (``vllm.LLM``) in this process, when vLLM is installed.

Sampling means the same on every backend (:class:`Sampling`: temperature, top-p, tokens, seed); a
temperature of 0 is greedy. Replies are cut at the end-of-turn marker and keep the special tokens (Qwen2-VL's
box tokens are special tokens): with vLLM's server set ``generation.extra_body: {skip_special_tokens: false,
spaces_between_special_tokens: false}``.

**Resumable.** Every finished reply is appended to a cache beside the stage's output (``<out>.replies/``,
stamped with what the replies are made from) as soon as it is in; a run that is interrupted (a
crash, a kill, a server that stays down) and started again asks only for what is missing, and the stage's
output is written, whole, only when every reply is there. The ``hf`` backend resumes by batch (a batch is
seeded by its position, so a batch redone gives the same samples); ``openai`` and ``vllm`` by question (each
seeded by its own position).

**The same result on any number of processes.** Batch ``c`` of the questions is sampled by process
``c % world`` with the seed ``seed + its first question's index``: one process and several give the same
replies, byte for byte (tests/test_backends.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

from .generation import clean_reply
from .prompts import user_turn

BACKENDS = ("hf", "openai", "vllm")
GENERATION_STAGES = ("cot", "rejection", "eval")
CACHE_FORMAT = 1


class GenerationError(RuntimeError):
    """A backend could not give a question its replies: an error body, no choices, a redirect, an HTTP error
    that retrying does not cure, or a server still failing after every retry."""


@dataclass
class GenerationConfig:
    """Section ``generation`` of the params: how the teacher, rejection sampling and the evaluation generate."""

    backend: Literal["hf", "openai", "vllm"] = field(default="hf", metadata={"help": "hf: transformers in this process (or over launch.num_processes); openai: an OpenAI-compatible server; vllm: vLLM's offline engine"})
    base_url: str = field(default="", metadata={"help": "openai: the endpoint, e.g. http://127.0.0.1:8000/v1"})
    served_model: str = field(default="", metadata={"help": "openai: the model name the server knows ('': the checkpoint's path, vllm serve's default name)"})
    api_key_env: str = field(default="", metadata={"help": "openai: NAME of the environment variable holding the API key ('': no key)"})
    concurrency: int = field(default=8, metadata={"help": "openai: requests in flight at once"})
    retries: int = field(default=4, metadata={"help": "openai: retries of a request after a dropped connection, a time-out, HTTP 408/429/5xx or a reply that is not JSON"})
    backoff_s: float = field(default=1.0, metadata={"help": "openai: seconds before the first retry, doubled for each next one (with jitter)"})
    timeout_s: float = field(default=300.0, metadata={"help": "openai: seconds a request may take"})
    extra_body: dict[str, Any] = field(default_factory=dict, metadata={"help": "openai: more request fields, e.g. {skip_special_tokens: false} for vLLM and Qwen2-VL's box tokens"})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs the engine splits the model over"})
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: the share of GPU memory the engine may take"})
    vllm_max_model_len: int = field(default=0, metadata={"help": "vllm: the longest prompt + reply in tokens (0: the model's)"})
    stages: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "stage (cot, rejection, eval) -> settings that differ for it, e.g. the teacher's server"})

    def __post_init__(self) -> None:
        from .config import ConfigError

        bad = [s for s in self.stages if s not in GENERATION_STAGES]
        if bad:
            raise ConfigError(f"generation.stages: unknown {bad}; these stages generate: {list(GENERATION_STAGES)}")
        if self.api_key_env and not ENV_NAME.fullmatch(self.api_key_env):
            # never echo the value: it may be the key itself, pasted by mistake
            raise ConfigError("generation.api_key_env must be the NAME of an environment variable that holds the key (e.g. OPENAI_API_KEY), not the key itself")
        if self.concurrency < 1 or self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ConfigError("generation: concurrency >= 1, retries >= 0, backoff_s >= 0 and timeout_s > 0")
        if self.backend == "openai" and not self.base_url and not self.stages:
            raise ConfigError("generation.backend 'openai' needs generation.base_url (e.g. http://127.0.0.1:8000/v1)")

    def for_stage(self, stage: str) -> GenerationConfig:
        """The settings ``stage`` generates with: ``stages[stage]`` over the section (:func:`config.overlay`)."""
        from .config import ConfigError, overlay

        if stage not in GENERATION_STAGES:
            raise ValueError(f"unknown generating stage {stage!r}; expected one of {GENERATION_STAGES}")
        out = overlay(self, "stages", stage, f"generation.stages.{stage}")
        if out.backend == "openai" and not out.base_url:
            raise ConfigError(f"generation (stage {stage}): backend 'openai' needs base_url")
        return out


@dataclass(frozen=True)
class Sampling:
    """What a reply is drawn with, the same on every backend: temperature 0 is greedy; ``seed`` (None: not
    seeded) is where a batch's (or a request's) seed counts from."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class Request:
    """One question: its text, its images (files) and how many replies it wants."""

    text: str
    images: tuple[str, ...] = ()
    n: int = 1

    def row(self) -> str:
        """One JSON line: what :func:`requests_digest` hashes and a launched run's processes read back."""
        return json.dumps([self.text, list(self.images), self.n])

    @classmethod
    def from_row(cls, line: str) -> Request:
        text, images, n = json.loads(line)
        return cls(text, tuple(images), n)


def question_seed(sampling: Sampling, position: int) -> int | None:
    """The seed of the question at ``position`` where a backend seeds each question by itself (servers, vLLM);
    a thousand apart, so that a server asked again for a question's further replies takes the next ones."""
    return None if sampling.seed is None else (sampling.seed + position) * 1000


# ---------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    name: str
    # None: a batch's samples depend on its other questions (hf), so the stage's batches are kept and a batch is
    # redone whole; else each question is seeded by its own index, and the questions still without replies are
    # asked in calls of at most this many (0: all at once)
    questions_per_call: int | None

    def generate(self, requests: Sequence[Request], sampling: Sampling, positions: Sequence[int], done: Callable[[int, list[str]], None]) -> None:
        """Reply to ``requests`` (the questions at ``positions`` of the run, which seed them), calling
        ``done(i, replies)`` in the calling thread once for each (``i``: its place in ``requests``)."""
        ...


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass
class HFBackend:
    """transformers' batched ``generate`` on a local checkpoint (:func:`mirg_lib.generation.generate_batch`):
    the ``n`` replies of every question of a batch in one call of at most ``batch_size`` prompts each."""

    model_path: str
    batch_size: int = 16
    dtype: str = "auto"  # auto (the checkpoint's), float32 or bfloat16
    model: Any = None
    processor: Any = None
    name: str = "hf"
    questions_per_call: int | None = None

    def load(self) -> None:
        import torch

        from .models import load_model, load_processor

        if self.model is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else None
            self.model = load_model(self.model_path, dtype=self.dtype if self.dtype == "auto" else getattr(torch, self.dtype), device=device)
        if self.processor is None:
            self.processor = load_processor(self.model_path)

    def generate(self, requests: Sequence[Request], sampling: Sampling, positions: Sequence[int], done: Callable[[int, list[str]], None]) -> None:
        from .generation import generate_batch

        self.load()
        images = [[_open_rgb(p) for p in r.images] for r in requests]
        msgs = [user_turn(len(r.images), r.text) for r in requests for _ in range(r.n)]
        imgs = [im for r, im in zip(requests, images, strict=True) for _ in range(r.n)]
        texts = generate_batch(
            self.model, self.processor, msgs, imgs, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            do_sample=not sampling.greedy, batch_size=self.batch_size, top_p=sampling.top_p,
            seed=None if sampling.seed is None else sampling.seed + positions[0],  # a batch: seeded by its first question
        )
        at = 0
        for i, r in enumerate(requests):
            done(i, texts[at : at + r.n])
            at += r.n


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def api_key_from_env(name: str) -> str | None:
    """The API key held by environment variable ``name`` (``""``: no key). The error for a variable that is
    unset names the variable, never a value; a ``name`` that is not a variable name (someone pasted the key
    itself) is refused without echoing it."""
    if not name:
        return None
    if not ENV_NAME.fullmatch(name):
        raise ValueError("api_key_env must be the NAME of an environment variable that holds the key (e.g. OPENAI_API_KEY), not the key itself")
    key = os.environ.get(name)
    if not key:
        raise ValueError(f"the API key variable {name} is not set (or empty) in the environment: export {name}=... before the run")
    return key


class _Secret:
    """A string that never shows itself: repr, str and format give ``<hidden>``."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__


class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    """No redirect is followed: urllib would resend the ``Authorization`` header to wherever it points (and turn
    the POST into a body-less GET), so a redirect is an error naming its target host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        target_url = urllib.parse.urljoin(req.full_url, newurl)
        target, here = urllib.parse.urlsplit(target_url), urllib.parse.urlsplit(req.full_url)
        fp.close()
        where = "another host" if (target.hostname, target.port) != (here.hostname, here.port) else "the same host"
        host = f"{target.hostname}{':' + str(target.port) if target.port else ''}"  # never a user:password@ part
        raise GenerationError(
            f"{shown_url(req.full_url)}: the endpoint redirected (HTTP {code}) to {where}, {host} ({shown_url(target_url)}); "
            "redirects are not followed (the API key would go with them): set base_url to the endpoint itself"
        )


def _server_message(data: Any) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ..}}``, ``{"error": ".."}``,
    FastAPI's ``{"detail": ..}``), else the body itself, shortened."""
    if isinstance(data, dict):
        err = data.get("error", data.get("detail"))
        if isinstance(err, dict):
            err = err.get("message") or err
        if isinstance(err, str) and err:
            return err
        if err is not None:
            return json.dumps(err)[:300]
    return json.dumps(data)[:300]


class _Retry(Exception):
    """A failure another try may cure (dropped connection, time-out, HTTP 408/429/5xx, a reply not JSON);
    ``after``: the seconds a ``Retry-After`` header asks for."""

    def __init__(self, message: str, after: float | None = None):
        super().__init__(message)
        self.after = after


def retried_http(code: int) -> bool:
    """HTTP statuses worth another try: 408, 409, 425, 429 and the 5xx (but 501 and 505, which never change)."""
    return code in (408, 409, 425, 429) or (500 <= code < 600 and code not in (501, 505))


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff instead


def _retried_error_body(data: Any) -> bool:
    """An error in a 200 body that another try may cure: a rate limit, an overload, a server error."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code, kind = err.get("code"), str(err.get("type") or "")
        if isinstance(code, int) and retried_http(code):
            return True
        return any(w in f"{code} {kind}".lower() for w in ("rate_limit", "overloaded", "server_error", "timeout"))
    return isinstance(err, str) and any(w in err.lower() for w in ("rate limit", "overloaded", "try again"))


def shown_url(url: str) -> str:
    """``url`` as messages and files show it: no ``user:password@``, no query string (either may hold a secret)."""
    u = urllib.parse.urlsplit(url)
    host = (u.hostname or "") + (f":{u.port}" if u.port else "")
    return urllib.parse.urlunsplit((u.scheme, host or u.netloc, u.path, "", ""))


def data_url(path: str) -> str:
    """An image file as a base64 PNG data URL (lossless: the server sees the pixels the file holds)."""
    buf = io.BytesIO()
    _open_rgb(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(text: str, images: Sequence[str]) -> list[dict[str, Any]]:
    """The OpenAI chat form of one question: its images as data URLs, then its text (the order of
    :func:`mirg_lib.prompts.user_turn`)."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in images]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


@dataclass
class OpenAIBackend:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint.

    The API key is read from the environment variable named ``api_key_env`` (or given as ``api_key``); it is
    sent as ``Authorization: Bearer ..`` and is neither a field (no repr, no ``asdict``) nor part of any
    message. Without a key no ``Authorization`` header is sent (a local vLLM or ``transformers serve``).
    Redirects are never followed. A reply that is an error body or has no choices is a
    :class:`GenerationError` naming the endpoint and the server's message. A server that ignores ``n`` (one
    choice per request) is asked again, with the next seed, until the question has its ``n`` replies."""

    base_url: str
    model: str
    api_key_env: str = ""
    timeout: float = 300.0
    concurrency: int = 8
    retries: int = 4
    backoff_s: float = 1.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    api_key: InitVar[str | None] = None
    name: str = "openai"
    questions_per_call: int | None = 0  # every missing question in one call: `concurrency` of them in flight

    def __post_init__(self, api_key: str | None) -> None:
        key = api_key if api_key is not None else api_key_from_env(self.api_key_env)
        self._key = _Secret(key) if key else None
        self._opener = urllib.request.build_opener(_RefuseRedirect)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def body(self, request: Request, sampling: Sampling, seed: int | None, n: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": chat_messages(request.text, request.images), "max_tokens": sampling.max_new_tokens,
            "temperature": max(0.0, sampling.temperature), "n": n,
        }
        if not sampling.greedy and sampling.top_p < 1.0:
            body["top_p"] = sampling.top_p
        if seed is not None:
            body["seed"] = seed
        return {**body, **self.extra_body}

    def replies(self, request: Request, sampling: Sampling, seed: int | None, stop: threading.Event | None = None) -> list[str]:
        """The ``request.n`` replies of one question (asking again while a server gives fewer); ``stop``: set when
        the run is given up, which ends the retries."""
        out = self._post(self.body(request, sampling, seed, request.n), stop)[: request.n]
        while len(out) < request.n:  # servers that ignore `n`: ask again, one at a time, with the next seed
            extra = None if seed is None else seed + len(out)
            out += self._post(self.body(request, sampling, extra, 1), stop)[:1]
        return [clean_reply(t) for t in out]

    def generate(self, requests: Sequence[Request], sampling: Sampling, positions: Sequence[int], done: Callable[[int, list[str]], None]) -> None:
        """``concurrency`` requests in flight; ``done`` is called in this thread as each finishes. A question that
        fails for good stops the run: no new request is sent, those in flight finish (their replies go to
        ``done``), then the failure is raised. An interrupt, or ``done`` raising, stops at once: the requests
        not yet sent are dropped and no retry follows."""
        seeds = [question_seed(sampling, p) for p in positions]
        failure: BaseException | None = None
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            todo = iter(range(len(requests)))
            running: dict[Future, int] = {}

            def submit_next() -> None:
                for i in todo:
                    running[pool.submit(self.replies, requests[i], sampling, seeds[i], stop)] = i
                    return

            for _ in range(self.concurrency):
                submit_next()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = running.pop(fut)
                    try:
                        result = fut.result()
                    except Exception as e:  # noqa: BLE001 - raised once the requests in flight are done
                        failure = failure or e
                        continue
                    done(i, result)
                    if failure is None:
                        submit_next()
        except BaseException:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if failure is not None:
            raise failure

    def ask(self, text: str, max_tokens: int = 512) -> str:
        """One text-only question, one greedy reply, e.g. an LLM judge's (:mod:`mirg_lib.benchmarks.judge`)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": text}], "temperature": 0.0, "max_tokens": max_tokens, "n": 1}
        return self._post({**body, **self.extra_body})[0]

    @property
    def shown_url(self) -> str:
        return shown_url(self.url)

    def _hide(self, text: str) -> str:
        """``text`` with the key and the URL's credentials blanked out (a server may echo what it was sent)."""
        if self.url != self.shown_url:
            text = text.replace(self.url, self.shown_url)
        return text.replace(self._key.reveal(), "<hidden>") if self._key else text

    def _post(self, body: dict[str, Any], stop: threading.Event | None = None) -> list[str]:
        """One request, retried ``retries`` times on what another try may cure (waiting what a ``Retry-After``
        asks, up to a minute, else an exponential backoff with jitter); its replies (at least one) or a
        :class:`GenerationError`."""
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(body)
            except _Retry as e:
                if attempt == self.retries:
                    raise GenerationError(self._hide(f"{self.shown_url}: still failing after {self.retries + 1} tries: {e}")) from None
                delay = e.after if e.after is not None else self.backoff_s * (2**attempt) * (0.5 + random.random())  # noqa: S311 - jitter
                if (stop or threading.Event()).wait(min(delay, 60.0)):  # set when the run is given up: no more tries
                    raise GenerationError(f"{self.shown_url}: the run was stopped") from None
        raise AssertionError("unreachable")

    def _post_once(self, body: dict[str, Any]) -> list[str]:
        import http.client
        import socket
        import ssl

        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        transient = (ConnectionError, TimeoutError, socket.timeout, socket.gaierror, http.client.HTTPException, ssl.SSLEOFError, ssl.SSLZeroReturnError)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:  # noqa: S310 - the user's own endpoint
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                detail = _server_message(json.loads(e.read()))
            except (ValueError, OSError):
                detail = e.reason
            if retried_http(e.code):
                raise _Retry(self._hide(f"HTTP {e.code}: {detail}"), _retry_after(e.headers)) from None
            raise GenerationError(self._hide(f"{self.shown_url}: HTTP {e.code}: {detail}")) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, transient):
                raise _Retry(f"{type(e.reason).__name__}: {e.reason}") from None
            raise GenerationError(self._hide(f"{self.shown_url}: {e.reason}")) from None
        except transient as e:  # dropped or cut short mid-reply
            raise _Retry(f"{type(e).__name__}: {e}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise _Retry(self._hide(f"the reply is not JSON: {raw[:200]!r}")) from None
        if not isinstance(data, dict) or data.get("error") is not None:
            message = f"the server answered with an error: {_server_message(data)}"
            if _retried_error_body(data):  # a rate limit or an overload reported in a 200 body
                raise _Retry(self._hide(message))
            raise GenerationError(self._hide(f"{self.shown_url}: {message}"))
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise GenerationError(self._hide(f"{self.shown_url}: the reply holds no choices (no sample): {_server_message(data)}"))
        return [(c.get("message") or {}).get("content") or "" if isinstance(c, dict) else "" for c in choices]


@dataclass
class VLLMBackend:
    """vLLM's offline engine (``vllm.LLM``) on a local checkpoint, when vLLM is installed (a CUDA GPU).

    Questions go through ``LLM.chat`` with their images as data URLs, ``limit_mm_per_prompt`` set to the most
    images any question of the run has; replies keep the special tokens as transformers writes them
    (``skip_special_tokens=False``, ``spaces_between_special_tokens=False``).
    Never run on the machines this project is measured on (docs/real_data.md)."""

    model_path: str
    max_images: int = 2
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 0
    seed: int = 0
    name: str = "vllm"
    questions_per_call: int | None = 256  # large batches for the engine; the replies cached after each call
    _llm: Any = None

    def same_engine(self, other: VLLMBackend) -> bool:
        """Whether ``other`` can be served by this one's engine."""
        return (self.model_path, self.tensor_parallel_size, self.gpu_memory_utilization, self.max_model_len, self.seed) == (
            other.model_path, other.tensor_parallel_size, other.gpu_memory_utilization, other.max_model_len, other.seed) and self.max_images >= other.max_images

    def close(self) -> None:
        """Let the engine go and give its GPU memory back (as far as vLLM lets a process do so)."""
        if self._llm is None:
            return
        import gc

        import torch

        self._llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def load(self) -> None:
        if self._llm is not None:
            return
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "generation.backend is 'vllm' but vLLM is not installed in this environment: `pip install vllm` (a CUDA GPU; it pins "
                "its own torch, so a separate environment is safest), or serve the model with `vllm serve` and use backend 'openai'."
            )
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": self.model_path, "limit_mm_per_prompt": {"image": max(1, self.max_images)}, "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization, "seed": self.seed,
        }
        if self.max_model_len:
            kwargs["max_model_len"] = self.max_model_len
        self._llm = LLM(**kwargs)

    def params(self, request: Request, sampling: Sampling, seed: int | None) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=request.n, temperature=max(0.0, sampling.temperature), top_p=sampling.top_p if not sampling.greedy else 1.0,
            max_tokens=sampling.max_new_tokens, seed=seed, skip_special_tokens=False, spaces_between_special_tokens=False,
        )

    def generate(self, requests: Sequence[Request], sampling: Sampling, positions: Sequence[int], done: Callable[[int, list[str]], None]) -> None:
        self.load()
        convs = [chat_messages(r.text, r.images) for r in requests]
        params = [self.params(r, sampling, question_seed(sampling, p)) for r, p in zip(requests, positions, strict=True)]
        outs = self._llm.chat(convs, params, use_tqdm=False)
        for i, out in enumerate(outs):
            done(i, [clean_reply(o.text) for o in out.outputs])


_ENGINE: list[VLLMBackend] = []  # the one vLLM engine kept between stages: a second beside it would not fit


def make_backend(cfg: GenerationConfig, model_path: str | Path, batch_size: int = 16, dtype: str = "auto", max_images: int = 2) -> Backend:
    """The backend ``cfg`` names, for the model at ``model_path`` (for ``openai``: the name the server knows it
    by, ``served_model`` or else the path); ``dtype`` (auto, float32, bfloat16): the weights of ``hf``. A vLLM
    engine is kept and given again while the same model and settings are asked for (it holds most of the GPU's
    memory); another one replaces it."""
    if cfg.backend == "hf":
        return HFBackend(str(model_path), batch_size=batch_size, dtype=dtype)
    if cfg.backend == "openai":
        if not cfg.base_url:
            raise ValueError("generation.backend 'openai' needs generation.base_url")
        return OpenAIBackend(cfg.base_url, cfg.served_model or str(model_path), api_key_env=cfg.api_key_env, timeout=cfg.timeout_s,
                             concurrency=cfg.concurrency, retries=cfg.retries, backoff_s=cfg.backoff_s, extra_body=dict(cfg.extra_body))
    if cfg.backend == "vllm":
        made = VLLMBackend(str(model_path), max_images=max_images, tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                           gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, max_model_len=cfg.vllm_max_model_len)
        if _ENGINE and _ENGINE[0].same_engine(made):
            return _ENGINE[0]
        while _ENGINE:
            _ENGINE.pop().close()
        _ENGINE.append(made)
        return made
    raise ValueError(f"unknown generation backend {cfg.backend!r}; expected one of {BACKENDS}")


def processes(cfg: GenerationConfig, launch: Any, stage: str) -> int:
    """The processes ``stage`` generates on: ``launch``'s for the ``hf`` backend, else one (a server or a vLLM
    engine batches by itself)."""
    return launch.world_size(stage) if launch is not None and cfg.backend == "hf" else 1


def stage_backend(cfg: GenerationConfig, model_path: str | Path, stage: str, launch: Any = None, batch_size: int = 16, dtype: str = "auto",
                  max_images: int = 2) -> Backend | None:
    """A backend to keep and reuse for several calls of :func:`generate` (e.g. a teacher's styles), or None where
    ``launch`` gives ``stage`` several processes, which load the model themselves."""
    if processes(cfg, launch, stage) > 1:
        return None
    return make_backend(cfg, model_path, batch_size, dtype, max_images)


# ---------------------------------------------------------------------------------------- the reply cache


def requests_digest(requests: Sequence[Request]) -> str:
    """What the questions are: every text, image path and ``n``, in order."""
    h = hashlib.sha256()
    for r in requests:
        h.update(r.row().encode() + b"\n")
    return h.hexdigest()[:16]


def read_part(path: Path, stamp: str) -> dict[int, list[str]]:
    """The replies a part file of the cache holds (question index -> replies) when it carries ``stamp``, else
    nothing. A last line a kill cut short is passed over; a broken line before it is an error naming it."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    lines.pop()  # "" when the file ends with its newline; else a line a kill cut short: its question is asked again
    if not lines:
        return {}
    if not _is_header(lines[0], stamp):  # another run's, or a header cut short: nothing of this run
        return {}
    out: dict[int, list[str]] = {}
    for n, line in enumerate(lines[1:], 2):
        try:
            row = json.loads(line)
            i, replies = int(row["i"]), row["replies"]
            if not (isinstance(replies, list) and all(isinstance(t, str) for t in replies)):
                raise ValueError("replies is not a list of strings")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: line {n} is not a cached reply ({e}); remove the file to generate its replies again") from None
        out[i] = replies
    return out


class _PartWriter:
    """Appends finished replies to this process's part file. Each line is flushed to the operating system before
    the next (a killed process loses none); the file is synced to disk at most once a second and when closed
    (a machine that goes down loses a second's replies at most, and a shared file system is not asked to sync
    every reply)."""

    SYNC_EVERY_S = 1.0

    def __init__(self, path: Path, stamp: str):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not _has_header(path, stamp)
        if not fresh:  # a line a kill cut short goes (its question is asked again): never glue a row to it
            with open(path, "rb+") as f:
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
        self._f = open(path, "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._synced = 0.0
        if fresh:
            self._write({"format": CACHE_FORMAT, "stamp": stamp})
        self._lock = threading.Lock()

    def _write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        if time.monotonic() - self._synced >= self.SYNC_EVERY_S:
            os.fsync(self._f.fileno())
            self._synced = time.monotonic()

    def add(self, i: int, replies: list[str]) -> None:
        with self._lock:
            self._write({"i": i, "replies": replies})

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def _is_header(line: str, stamp: str) -> bool:
    """Whether ``line`` is the header of a part file of the run ``stamp``."""
    try:
        head = json.loads(line)
    except ValueError:
        return False
    return isinstance(head, dict) and head.get("stamp") == stamp and head.get("format") == CACHE_FORMAT


def _has_header(path: Path, stamp: str) -> bool:
    """Whether ``path`` begins with a whole header line of the run ``stamp``."""
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    return first.endswith("\n") and _is_header(first, stamp)


def _part_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("part-*.jsonl"))


def cached_replies(cache: Path, stamp: str) -> dict[int, list[str]]:
    """Every reply the cache folder holds for ``stamp``, from the part files of every process."""
    out: dict[int, list[str]] = {}
    for p in _part_files(cache):
        out.update(read_part(p, stamp))
    return out


def batches(n_requests: int, per_batch: int) -> list[range]:
    return [range(s, min(s + per_batch, n_requests)) for s in range(0, n_requests, max(1, per_batch))]


def run_shard(backend: Backend, requests: Sequence[Request], sampling: Sampling, per_batch: int, cache: Path, stamp: str,
              rank: int = 0, world: int = 1, progress: str | None = None) -> None:
    """Generate this process's share of ``requests`` into the cache folder ``cache``: batch ``c`` (of
    ``per_batch`` questions) is this process's when ``c % world == rank``; what the cache already holds for
    ``stamp`` (from any process, any earlier run) is not asked again."""
    from tqdm import tqdm

    have = cached_replies(cache, stamp)
    mine = [b for c, b in enumerate(batches(len(requests), per_batch)) if c % world == rank]
    if backend.questions_per_call is not None:  # only the questions still without replies
        missing = [i for b in mine for i in b if i not in have]
        longest = backend.questions_per_call or len(missing) or 1
        todo = [missing[k : k + longest] for k in range(0, len(missing), longest)]
    else:
        todo = [list(b) for b in mine if any(i not in have for i in b)]
    if not todo:
        return
    writer = _PartWriter(cache / f"part-{rank:03d}.jsonl", stamp)
    try:
        bar = tqdm(total=sum(len(b) for b in todo), desc=progress or f"generating ({backend.name})", mininterval=5, disable=progress == "")
        for b in todo:
            def done(i: int, replies: list[str], b: list[int] = b) -> None:
                if len(replies) != requests[b[i]].n:
                    raise GenerationError(f"question {b[i]}: the {backend.name} backend gave {len(replies)} replies, not {requests[b[i]].n}")
                writer.add(b[i], replies)
                bar.update(1)

            backend.generate([requests[i] for i in b], sampling, b, done)
        bar.close()
    finally:
        writer.close()


def gather(cache: Path, stamp: str, n_requests: int) -> list[list[str]]:
    """The replies of questions ``0 .. n_requests - 1`` from the cache, in order; one missing is an error."""
    have = cached_replies(cache, stamp)
    missing = [i for i in range(n_requests) if i not in have]
    if missing:
        raise GenerationError(f"{cache}: {len(missing)} of {n_requests} questions have no replies (first: {missing[:5]}); run the stage again to finish them")
    return [have[i] for i in range(n_requests)]


def run_stamp(backend_cfg: GenerationConfig, model_identity: str, requests: Sequence[Request], sampling: Sampling, per_batch: int,
              batch_size: int = 16, dtype: str = "auto") -> str:
    """What a run's replies are made from: the backend (and where it is), the model, the questions and the
    sampling; for ``hf`` also the batches, the prompts per call and the weights' dtype, which its replies
    depend on (the servers' and vLLM's questions are seeded one by one)."""
    from .config import digest

    how = {"per_batch": per_batch, "batch_size": batch_size, "dtype": dtype} if backend_cfg.backend == "hf" else {}
    return digest({"format": CACHE_FORMAT, "backend": backend_cfg.backend + generation_tag(backend_cfg), "model": model_identity,
                   "requests": requests_digest(requests), "sampling": dataclasses.asdict(sampling), **how})


def generation_tag(cfg: GenerationConfig) -> str:
    """What the backend adds to a generating stage's digest: nothing for ``hf`` (on any number of processes
    its replies are the same), else the backend and where it is."""
    if cfg.backend == "hf":
        return ""
    from .config import digest

    where = {"backend": cfg.backend}
    if cfg.backend == "openai":
        where.update(base_url=cfg.base_url, served_model=cfg.served_model, extra_body=cfg.extra_body)
    return ":" + digest(where)


def cache_dir(out_dir: str | Path) -> Path:
    """Where a stage writing ``out_dir`` keeps its finished replies until its output is written."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.replies"


def drop_cache(out_dir: str | Path) -> None:
    """Remove a stage's reply cache once its output is written (:func:`cache_dir`)."""
    import shutil

    shutil.rmtree(cache_dir(out_dir), ignore_errors=True)


def generate(cfg: GenerationConfig, model_path: str | Path, requests: Sequence[Request], sampling: Sampling, out_dir: str | Path | None, *,
             stage: str, per_batch: int, batch_size: int = 16, dtype: str = "auto", launch: Any = None, backend: Backend | None = None,
             model_identity: str | None = None, progress: str | None = None) -> list[list[str]]:
    """The replies to ``requests`` (``request.n`` each, in order) from ``cfg``'s backend, for ``stage`` (one of
    :data:`GENERATION_STAGES`) whose output goes to ``out_dir``.

    ``per_batch`` questions make a batch (``batch_size``: prompts per ``generate`` call of the ``hf`` backend,
    ``dtype`` its weights: auto, float32 or bfloat16).
    Finished replies wait in :func:`cache_dir` of ``out_dir`` (a temporary folder without one), which an
    interrupted run resumes from; the stage removes it with :func:`drop_cache` once its output is written.
    With the ``hf`` backend and ``launch`` giving ``stage`` several processes, the batches are shared out over
    ``accelerate launch`` processes and gathered in order. ``backend``: an already built one (e.g. an
    ``HFBackend`` around a loaded model)."""
    import tempfile

    from .trainers import model_identity as identity_of

    requests = list(requests)
    if not requests:
        return []
    ident = model_identity or identity_of(model_path)
    stamp = run_stamp(cfg, ident, requests, sampling, per_batch, batch_size, dtype)
    tmp = tempfile.TemporaryDirectory(prefix="mirg-replies-") if out_dir is None else None
    cache = Path(tmp.name) if tmp is not None else cache_dir(out_dir)
    try:
        if backend is not None or processes(cfg, launch, stage) == 1:
            made = backend or make_backend(cfg, model_path, batch_size, dtype, max(len(r.images) for r in requests))
            run_shard(made, requests, sampling, per_batch, cache, stamp, progress=progress)
        else:
            from .launch import run_launched

            cache.mkdir(parents=True, exist_ok=True)
            (cache / "requests.jsonl").write_text("".join(r.row() + "\n" for r in requests), encoding="utf-8")
            spec = {"cfg": {"bf16": dtype == "bfloat16"}, "dtype": dtype, "generation": dataclasses.asdict(cfg), "model_path": str(model_path), "requests": str(cache / "requests.jsonl"),
                    "sampling": dataclasses.asdict(sampling), "per_batch": per_batch, "batch_size": batch_size, "cache": str(cache), "stamp": stamp}
            run_launched(stage, launch, spec, cache)
        return gather(cache, stamp, len(requests))
    finally:
        if tmp is not None:
            tmp.cleanup()


def run_launched_shard(spec: dict[str, Any]) -> None:
    """Inside each process ``accelerate launch`` started for a generating stage: its share of the batches."""
    from .config import from_dict
    from .dist import rank, world_size

    cfg = from_dict(GenerationConfig, spec["generation"], "generation")
    requests = [Request.from_row(line) for line in Path(spec["requests"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    backend = make_backend(cfg, spec["model_path"], spec["batch_size"], spec["dtype"], max(len(r.images) for r in requests))
    run_shard(backend, requests, Sampling(**spec["sampling"]), spec["per_batch"], Path(spec["cache"]), spec["stamp"], rank=rank(), world=world_size(),
              progress=f"generating {spec['stage']} (process {rank()} of {world_size()})")
