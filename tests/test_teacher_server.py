"""The OpenAI-compatible teacher against a real server on loopback: `transformers serve` with a nano model."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mirg_lib.backends import GenerationConfig, GenerationError
from mirg_lib.items import load_pool_items
from mirg_lib.teacher import ModelTeacher, TeacherItem, _prompt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(nano_checkpoint):
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        pytest.skip("transformers CLI not installed (pip install 'transformers[serving]')")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([str(exe), "serve", str(nano_checkpoint), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not come up in 60 s")
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_openai_teacher_sends_images_and_gets_samples(server, nano_checkpoint, smoke_world):
    items = [it for it in load_pool_items(smoke_world.train_file) if len(it.images) >= 2][:2]
    teacher = ModelTeacher(GenerationConfig(backend="openai", base_url=server), str(nano_checkpoint), temperature=0.7, max_new_tokens=8)
    replies = teacher.answer([TeacherItem(it.id, it.task, it.images, it.question) for it in items], 2, "zhang")
    assert len(replies) == 2 and all(len(r) == 2 and all(isinstance(x, str) for x in r) for r in replies)
    # the request really carries the images, as base64 PNG data URLs, and the prompt of the recipe
    from mirg_lib.backends import chat_messages

    msgs = chat_messages(_prompt(items[0].question, "zhang"), [str(p) for p in items[0].images])
    urls = [c["image_url"]["url"] for c in msgs[0]["content"] if c["type"] == "image_url"]
    assert len(urls) == len(items[0].images) and all(u.startswith("data:image/png;base64,") for u in urls)
    assert msgs[0]["content"][-1]["text"].endswith("Output the bounding box coordinates in JSON format.")


def test_a_dead_endpoint_is_a_clear_error():
    gen = GenerationConfig(backend="openai", base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout_s=2, retries=1, backoff_s=0.01)
    with pytest.raises(GenerationError, match="still failing after 2 tries: ConnectionRefusedError"):
        ModelTeacher(gen, "none").answer([TeacherItem("x", "diff", [], "q")], 1, "zhang")
