"""The scripted teacher: right when told to be, wrong at its error rate, in every recipe format."""

import json

import pytest

from mirg_lib.formats import MIG_TASKS
from mirg_lib.parsing import parse_response
from mirg_lib.rewards import RECIPE_REWARDS, total_reward, zhang_accuracy
from mirg_lib.teacher import ScriptedTeacher, TeacherItem


def _items(world, split="train"):
    rows = [json.loads(line) for line in (world.root / split / "scenes.jsonl").read_text().splitlines()]
    return [TeacherItem(r["id"], r["task"], [], r["question"], r) for r in rows], rows


@pytest.mark.parametrize("reasoning", ["read_out", "hops"])
@pytest.mark.parametrize("style", ["zhang", "mirg_text", "mirg_bbox", "answer"])
def test_a_perfect_teacher_is_always_right(smoke_world, style, reasoning):
    items, rows = _items(smoke_world)
    replies = ScriptedTeacher(error_rate=0.0, box_jitter=0.0, reasoning=reasoning).answer(items, 2, style)
    flat = [r for rs in replies for r in rs]
    kw = {"answer": [row["answer"] for row in rows for _ in range(2)], "target_image": [row["target_image"] for row in rows for _ in range(2)]}
    ious = zhang_accuracy(flat, **kw)
    assert min(ious) > 0.97, [(f, i) for f, i in zip(flat, ious, strict=True) if i < 0.97][:3]
    if style == "zhang":
        assert total_reward(RECIPE_REWARDS["zhang"], flat, **kw) == pytest.approx([1.5] * len(flat), abs=0.03)
        # in box tokens (the CoT stage's notation on a Qwen2-VL policy) the rewards are as full
        tokens = [rs[0] for rs in ScriptedTeacher(error_rate=0.0, box_jitter=0.0, reasoning=reasoning, notation="tokens").answer(items, 1, style)]
        tkw = {"answer": [row["answer"] for row in rows], "box_notation": ["tokens"] * len(tokens)}
        assert total_reward(RECIPE_REWARDS["zhang"], tokens, **tkw) == pytest.approx([1.5] * len(tokens), abs=0.03)
    if style in ("mirg_text", "mirg_bbox"):
        assert min(total_reward(RECIPE_REWARDS["mirg"], flat, **kw)) > 2.97
    if style == "mirg_bbox":
        for r in flat:
            p = parse_response(r)
            assert p.trajectory and all(t.image >= 1 and t.index >= 1 for t in p.trajectory)
            first = {}
            for t in p.trajectory[:-1]:  # the answer's own bbox_id is a later mention
                key = (t.image, t.index)
                assert (key in first) == (t.box is None), r  # first mention carries the box, later ones do not
                first.setdefault(key, t)


@pytest.mark.parametrize("style", ["zhang", "mirg_text", "mirg_bbox"])
def test_the_reasoning_reads_the_images_out_then_answers_with_a_box_it_wrote(smoke_world, style):
    """Each image the question needs is read out as "Image N: the <size> <colour> <pattern> <shape>, ...." (every
    object, in reading order: top band first, left to right); the answer's box is the box the reasoning wrote
    for the answer object (zhang: its last JSON box; mirg_bbox: the caption its bbox_id carries)."""
    import re

    from mirg_lib.world.objects import SIZE_WORDS

    items, rows = _items(smoke_world)
    replies = ScriptedTeacher(error_rate=0.3, seed=1).answer(items, 2, style)
    read_out = {"diff": [1, 2], "common_object": None, "refer_grounding": [1, 2], "region": [1]}
    for row, rs in zip(rows, replies, strict=True):
        for r in rs:
            think = parse_response(r).think
            if row["task"] in read_out:
                for n in read_out[row["task"]] or range(1, len(row["images"]) + 1):
                    image = row["images"][n - 1]
                    order = sorted(image["objects"], key=lambda o: (min(3, int(4 * (o["box"][1] + o["box"][3]) / 2 / image["size"][1])), o["box"][0] + o["box"][2]))
                    names = ", ".join(f"the {SIZE_WORDS[o['size']]} {o['colour']} {o['pattern']} {o['shape']}" for o in order)
                    assert f"Image {n}: {names}." in think, (r, names)
            answer = re.sub(r"\s", "", r.split("<answer>")[1])
            if style == "zhang":
                written = re.findall(r'\{"bbox_2d": \[[\d, ]+\]\}', think)[-1]
                assert re.sub(r"\s", "", written)[:-1] in answer, r
            elif style == "mirg_bbox":
                bid = re.search(r"<bbox_id>\[(\d+-\d+)\]</bbox_id>", answer).group(1)
                box = re.search(r"<bbox_id>\[" + bid + r"\]</bbox_id><\|object_ref_start\|>[^<]*<\|object_ref_end\|>(<\|box_start\|>[^<]*<\|box_end\|>)", r).group(1)
                assert answer.endswith(box + "</answer>"), r
            else:
                assert "<|box_start|>" not in think


def test_zhang_replies_in_box_tokens_repeat_the_reasoning_box_as_a_grounded_caption(smoke_world):
    """notation="tokens": every box Zhang et al.'s reply writes is Qwen2-VL's box tokens, the answer is the target
    named then the box the reasoning last wrote, and the tokens-notation format reward is full; the default is
    the paper's JSON, unchanged (the base model's curriculum reads it)."""
    import re

    items, rows = _items(smoke_world)
    replies = ScriptedTeacher(error_rate=0.0, box_jitter=0.0, notation="tokens").answer(items, 1, "zhang")
    flat = [rs[0] for rs in replies]
    kw = {"answer": [row["answer"] for row in rows], "box_notation": ["tokens"] * len(flat)}
    assert total_reward(RECIPE_REWARDS["zhang"], flat, **kw) == pytest.approx([1.5] * len(flat), abs=0.03)
    for r in flat:
        assert "bbox_2d" not in r and "```" not in r, r
        think, answer = parse_response(r).think, r.split("<answer>")[1]
        written = re.findall(r"<\|box_start\|>[^<]*<\|box_end\|>", think)[-1]
        assert re.fullmatch(r"<\|object_ref_start\|>the [a-z -]+<\|object_ref_end\|>" + re.escape(written) + "</answer>", answer), r
        assert answer.removesuffix("</answer>") in think, r  # the reasoning boxed it as the same grounded caption
    json_replies = ScriptedTeacher(error_rate=0.0, box_jitter=0.0).answer(items, 1, "zhang")
    assert all('```json\n{"bbox_2d": [' in rs[0] and "<|box_start|>" not in rs[0] for rs in json_replies)
    with pytest.raises(ValueError, match="unknown box notation"):
        ScriptedTeacher(notation="xml")


@pytest.mark.parametrize("style", ["zhang", "mirg_text", "mirg_bbox"])
def test_hops_name_the_questions_object_then_box_the_answer_without_read_outs(smoke_world, style):
    """reasoning="hops": no image is read out; on the in-domain tasks the reasoning first names, in full, the
    object the question is about (image 1's reference, what a difference changed, the crop's identity), then
    the answer's object named and boxed in its image, the last object it boxes, which the answer repeats; every
    task of the world gets a reasoning shorter than the read-out one. A wrong sample hops to the wrong object in
    the same way."""
    import re

    from mirg_lib.teacher import object_words

    items, rows = _items(smoke_world)
    for rate in (0.0, 1.0):
        hops = ScriptedTeacher(error_rate=rate, seed=2, notation="tokens", reasoning="hops").answer(items, 1, style)
        read_out = ScriptedTeacher(error_rate=rate, seed=2, notation="tokens").answer(items, 1, style)
        for row, (h,), (r,) in zip(rows, hops, read_out, strict=True):
            think = parse_response(h).think
            assert not re.search(r"Image \d: the", think), h
            assert len(think) < len(parse_response(r).think) or row["task"] == "single_refer", (h, r)
            assert h.split("</think>")[1] == r.split("</think>")[1], (h, r)  # the same answer, whichever reasoning
            meta, first = row.get("meta", {}), row["images"][0]["objects"][0]
            if row["task"] == "refer_grounding":
                assert think.startswith(f"Image 1 shows the {object_words(first)}. In image 2 it is "), h
            if row["task"] == "diff" and meta.get("before") and meta.get("change") != "add":
                assert think.startswith(f"Image 1 has the {object_words(meta['before'])}"), h
            if row["task"] == "region" and "shape" in meta["regions"][meta["region_index"] - 1]:
                region = meta["regions"][meta["region_index"] - 1]
                assert think.startswith(f"Image {meta['region_index'] + 1} shows the {region['colour']} {region['pattern']} {region['shape']}. In image 1 it is "), h
            if style == "zhang":  # the last object the reasoning boxes is the answer's grounded caption
                caption = h.split("<answer>")[1].removesuffix("</answer>")
                assert think.rfind("<|object_ref_start|>") == think.find(caption) >= 0, h
    with pytest.raises(ValueError, match="unknown reasoning"):
        ScriptedTeacher(reasoning="listing")


def test_the_cot_stage_writes_hops_and_its_digest_says_so(smoke_world, tmp_path, monkeypatch):
    """The CoT stage's scripted teacher reasons in hops (no image read out), and its cache is keyed by the form:
    a run made with another form is not reused."""
    from mirg_lib import cot
    from mirg_lib.cot import CotConfig, run_cot

    cfg = CotConfig(tasks=["diff", "refer_grounding"], max_items_per_task=4, styles=["zhang"], error_rate=0.0, box_notation="tokens")
    res = run_cot(cfg, smoke_world.root, tmp_path / "cot")
    rows = [json.loads(line) for line in (tmp_path / "cot" / "sft_zhang.jsonl").read_text().splitlines()]
    assert rows and not any("Image 1: the" in r["completion"] for r in rows)
    assert not res.skipped and run_cot(cfg, smoke_world.root, tmp_path / "cot").skipped
    monkeypatch.setattr(cot, "COT_REASONING", "read_out")
    again = run_cot(cfg, smoke_world.root, tmp_path / "cot")
    assert not again.skipped
    assert any("Image 1: the" in json.loads(line)["completion"] for line in (tmp_path / "cot" / "sft_zhang.jsonl").read_text().splitlines())


def test_error_rate_is_honoured_and_deterministic(smoke_world):
    items, rows = _items(smoke_world)
    teacher = ScriptedTeacher(error_rate=0.5, seed=3)
    replies = teacher.answer(items, 8, "zhang")
    assert replies == ScriptedTeacher(error_rate=0.5, seed=3).answer(items, 8, "zhang")
    flat = [r for rs in replies for r in rs]
    kw = {"answer": [row["answer"] for row in rows for _ in range(8)]}
    wrong = sum(v < 0.5 for v in zhang_accuracy(flat, **kw)) / len(flat)
    assert 0.35 < wrong < 0.65
    per_task = ScriptedTeacher(error_rate=0.0, error_rates={"diff": 1.0}).answer(items, 2, "zhang")
    for item, rs, row in zip(items, per_task, rows, strict=True):
        ious = zhang_accuracy(rs, answer=[row["answer"]] * 2)
        assert (max(ious) < 0.5) == (item.task == "diff"), (item.task, rs)
    assert {i.task for i in items} >= set(MIG_TASKS)


def test_cot_in_the_abs_frame_keeps_what_a_perfect_teacher_writes(smoke_world, tmp_path):
    """Qwen2.5-VL's frame: the teacher writes pixel boxes at the resized size, the 4-of-4 filter reads
    them so (a perfect teacher loses nothing) and the answer-only baseline is rewritten in pixels."""
    from mirg_lib.cot import CotConfig, abs_size, run_cot
    from mirg_lib.items import load_pool_items

    cfg = CotConfig(tasks=["single_refer", "diff"], max_items_per_task=6, styles=["zhang"], frame="abs", error_rate=0.0)
    res = run_cot(cfg, smoke_world.root, tmp_path / "cot", ScriptedTeacher(error_rate=0.0, box_jitter=0.0, frame="abs"))
    assert all(r["zhang kept"] == r["candidates"] >= 4 for r in res.table)
    by_id = {it.id: it for it in load_pool_items(smoke_world.train_file)}
    answers = [json.loads(line) for line in (tmp_path / "cot" / "sft_answer.jsonl").read_text().splitlines()]
    assert len(answers) == sum(r["candidates"] for r in res.table)
    for a in answers:
        it = by_id[a["id"]]
        ious = zhang_accuracy([a["completion"]], answer=[it.answer], box_frame=["abs"], image_size=[abs_size(it)])
        assert ious[0] > 0.9, a
    # read by the 0-1000 rule the same replies are wrong: the frame is really in use
    replies = [json.loads(line)["samples"][0] for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    assert sum(v >= 0.5 for v in zhang_accuracy(replies, answer=[by_id[i].answer for i in ids])) < len(ids) / 2


def test_the_answer_only_target_names_a_multi_image_answer_and_keeps_its_box(smoke_world, tmp_path):
    """The answer-only SFT's data: a multi-image item whose answer is one box names its drawn target before
    the data's own box (scored as that box); a single-image item, a scene-less one and an answer that is more
    than a box (group grounding's "It's in the fifth image.") keep the data's own."""
    import dataclasses

    from mirg_lib.cot import CotConfig, answer_only, run_cot
    from mirg_lib.items import load_pool_items
    from mirg_lib.teacher import object_words

    pool = load_pool_items(smoke_world.train_file)
    named = [it for it in pool if len(it.images) > 1 and it.task in ("common_object", "refer_grounding", "diff", "region")]
    assert {it.task for it in named} == {"common_object", "refer_grounding", "diff", "region"}
    for it in named:
        got = answer_only(it)
        assert got == f"<|object_ref_start|>the {object_words(it.scene['target'])}<|object_ref_end|>{it.reference}", got
        iou = zhang_accuracy([it.reference], answer=[it.answer])[0]
        assert iou > 0.9 and zhang_accuracy([got], answer=[it.answer])[0] == pytest.approx(iou)
        assert answer_only(dataclasses.replace(it, scene=None)) == it.reference  # real data: no scene, its own answer
        assert answer_only(dataclasses.replace(it, reference=None)) is None
    bare = [it for it in pool if it.task in ("single_refer", "group_grounding")]
    assert {it.task for it in bare} == {"single_refer", "group_grounding"}
    assert all(answer_only(it) == it.reference for it in bare)
    assert any(not it.reference.startswith("<|box_start|>") for it in bare if it.task == "group_grounding")
    cfg = CotConfig(tasks=["single_refer", "diff", "group_grounding"], max_items_per_task=4, styles=["zhang"], error_rate=0.0)
    run_cot(cfg, smoke_world.root, tmp_path / "cot", ScriptedTeacher(error_rate=0.0, box_jitter=0.0))
    rows = [json.loads(line) for line in (tmp_path / "cot" / "sft_answer.jsonl").read_text().splitlines()]
    by_id = {it.id: it for it in pool}
    assert {r["task"] for r in rows} == {"single_refer", "diff", "group_grounding"}
    assert all(r["completion"] == answer_only(by_id[r["id"]]) for r in rows)
    assert all(r["completion"].startswith("<|object_ref_start|>the ") == (r["task"] == "diff") for r in rows)


@pytest.mark.slow
def test_a_model_teacher_samples_a_checkpoint(nano_checkpoint, smoke_world, tmp_path):
    """A model teacher on the hf backend: n samples per item, in order, batched across items; the same seed
    gives the same samples; run_cot uses it from params and leaves no reply cache behind."""
    from mirg_lib.backends import GenerationConfig
    from mirg_lib.cot import CotConfig, run_cot
    from mirg_lib.items import load_pool_items
    from mirg_lib.teacher import ModelTeacher

    pool = load_pool_items(smoke_world.train_file)[:3]
    items = [TeacherItem(i.id, i.task, i.images, i.question, None) for i in pool]
    teacher = ModelTeacher(GenerationConfig(), str(nano_checkpoint), temperature=1.0, max_new_tokens=6, batch_size=4, seed=1)
    out = teacher.answer(items, 3, "zhang")
    assert [len(rs) for rs in out] == [3, 3, 3] and all(isinstance(r, str) for rs in out for r in rs)
    assert len({r for rs in out for r in rs}) > 1  # sampled, not one reply copied
    assert ModelTeacher(GenerationConfig(), str(nano_checkpoint), temperature=1.0, max_new_tokens=6, batch_size=4, seed=1).answer(items, 3, "zhang") == out
    cfg = CotConfig(teacher="model", teacher_model=str(nano_checkpoint), tasks=["single_refer"], max_items_per_task=2, n_samples=2, styles=["zhang"], max_new_tokens=6)
    res = run_cot(cfg, smoke_world.root, tmp_path / "cot")
    assert res.table[0]["candidates"] == 2
    samples = [json.loads(line) for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    assert [len(s["samples"]) for s in samples] == [2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cot"]  # the replies' cache is gone once the output is written


# ------------------------------------------------- the OpenAI-compatible teacher against a stand-in endpoint

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import urllib.request  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from mirg_lib.backends import GenerationConfig, GenerationError, OpenAIBackend  # noqa: E402
from mirg_lib.teacher import ModelTeacher  # noqa: E402

KEY_VAR = "MIRG_TEST_TEACHER_KEY"
KEY = "sk-test-0123456789abcdefSECRET"
REPLY = '<think>I look.</think><answer>```json\n{"bbox_2d": [1, 2, 30, 40], "label": "x"}\n```</answer>'


def _completion(n: int) -> dict:
    return {"object": "chat.completion", "choices": [{"index": i, "message": {"role": "assistant", "content": REPLY}} for i in range(n)]}


@contextlib.contextmanager
def _endpoint(respond, host: str = "127.0.0.1"):
    """A stand-in OpenAI-compatible server on loopback, in a thread, that stops by itself after 60 s at most.
    ``respond(request_json_or_None) -> (status, extra_headers, payload)``; yields its URL and the list of the
    requests it saw (method, path, Authorization header)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            seen.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization")})
            status, headers, payload = respond(json.loads(raw) if raw else None)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _answer

        def log_message(self, *args) -> None:
            pass

    srv = ThreadingHTTPServer((host, 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    deadline = threading.Timer(60, srv.shutdown)
    deadline.daemon = True
    deadline.start()
    try:
        yield f"http://{host}:{srv.server_address[1]}", seen
    finally:
        deadline.cancel()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _q():
    return [TeacherItem("x", "diff", [], "Where is it?")]


def _teacher(url: str, model: str, api_key_env: str = "", retries: int = 0) -> ModelTeacher:
    """A model teacher on an OpenAI-compatible endpoint (the generation backend ``openai``)."""
    return ModelTeacher(GenerationConfig(backend="openai", base_url=url, api_key_env=api_key_env, timeout_s=5, retries=retries), model)


def test_openai_teacher_sends_the_key_of_the_named_variable_and_shows_it_nowhere(monkeypatch, no_proxy):
    monkeypatch.setenv(KEY_VAR, KEY)
    with _endpoint(lambda body: (200, {}, _completion(body["n"]))) as (url, seen):
        assert _teacher(url + "/v1", "gpt-4o", KEY_VAR).answer(_q(), 2, "zhang") == [[REPLY, REPLY]]
        assert [(s["path"], s["auth"]) for s in seen] == [("/v1/chat/completions", f"Bearer {KEY}")]
        client = OpenAIBackend(url + "/v1", "gpt-4o", api_key_env=KEY_VAR, timeout=5)
        assert KEY not in repr(client) and KEY not in str(dataclasses.asdict(client)) and KEY not in str(vars(client))
        # without a key no Authorization header at all (a local server)
        monkeypatch.delenv(KEY_VAR)
        _teacher(url + "/v1", "m").answer(_q(), 1, "zhang")
        assert seen[-1]["auth"] is None
    # named but unset: an error naming the variable
    with pytest.raises(ValueError, match=KEY_VAR):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env=KEY_VAR)


def test_the_key_is_in_no_file_the_cot_stage_writes(smoke_world, tmp_path, monkeypatch, no_proxy):
    """run_cot with a model teacher on the openai backend and its api_key_env: every request carries the key, no
    output file, the config's repr/asdict or its digest holds it; the variable's name is what the table records."""
    from mirg_lib.config import config_hash
    from mirg_lib.cot import CotConfig, run_cot

    monkeypatch.setenv(KEY_VAR, KEY)
    # a server that ignores `n` (one choice per request): the teacher asks again until it has n_samples
    with _endpoint(lambda body: (200, {}, _completion(1))) as (url, seen):
        cfg = CotConfig(teacher="model", teacher_model="gpt-4o", tasks=["single_refer"], max_items_per_task=2, styles=["zhang", "mirg_text"])
        gen = GenerationConfig(backend="openai", base_url=url + "/v1", api_key_env=KEY_VAR, timeout_s=5)
        run_cot(cfg, smoke_world.root, tmp_path / "cot", generation=gen)
    assert len(seen) == 2 * 2 * 4 and all(s["auth"] == f"Bearer {KEY}" for s in seen)
    written = [p for p in (tmp_path / "cot").rglob("*") if p.is_file()]
    assert len(written) >= 5
    assert [p.name for p in written if KEY.encode() in p.read_bytes()] == []
    samples = [json.loads(line) for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    assert [len(s["samples"]) for s in samples] == [4, 4]
    assert json.loads((tmp_path / "cot" / "table.json").read_text())["generation"]["api_key_env"] == KEY_VAR
    assert KEY not in repr(gen) and KEY not in str(dataclasses.asdict(gen))
    monkeypatch.setenv(KEY_VAR, "sk-another-key")
    assert config_hash(gen) == config_hash(dataclasses.replace(gen))  # the key is not an input of the digest
    # named but unset: a clear error naming the variable, before anything is written
    monkeypatch.delenv(KEY_VAR)
    with pytest.raises(ValueError, match=f"{KEY_VAR} is not set"):
        run_cot(dataclasses.replace(cfg, max_items_per_task=1), smoke_world.root, tmp_path / "cot2", generation=gen)
    assert not (tmp_path / "cot2").exists()


def test_a_key_pasted_as_the_variable_name_is_refused_without_echoing_it():
    from mirg_lib.config import ConfigError, from_dict

    with pytest.raises(ConfigError) as e:
        from_dict(GenerationConfig, {"backend": "openai", "base_url": "http://h/v1", "api_key_env": KEY}, "params.yaml [generation]")
    assert "api_key_env" in str(e.value) and KEY not in str(e.value)
    with pytest.raises(ConfigError) as e:
        from_dict(GenerationConfig, {"stages": {"cot": {"api_key_env": KEY}}}, "params.yaml [generation]").for_stage("cot")
    assert "api_key_env" in str(e.value) and KEY not in str(e.value)
    assert GenerationConfig(api_key_env="OPENAI_API_KEY").api_key_env == "OPENAI_API_KEY"


@pytest.mark.parametrize("payload, says", [
    ({"error": {"message": "The model `gpt-5o` does not exist", "type": "invalid_request_error"}}, "does not exist"),
    ({"error": "rate limit reached"}, "rate limit reached"),
    ({"object": "chat.completion", "choices": []}, "no choices"),
    ({"object": "chat.completion"}, "no choices"),
])
def test_a_200_error_body_or_no_choices_is_a_clear_error(payload, says, no_proxy):
    with _endpoint(lambda body: (200, {}, payload)) as (url, _):
        with pytest.raises(GenerationError, match=says) as e:
            _teacher(url + "/v1", "m").answer(_q(), 4, "zhang")
    assert f"{url}/v1/chat/completions" in str(e.value)


def test_an_http_error_names_the_endpoint_and_the_servers_message_but_never_the_key(monkeypatch, no_proxy):
    monkeypatch.setenv(KEY_VAR, KEY)
    body = {"error": {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error"}}
    with _endpoint(lambda _: (401, {}, body)) as (url, _):
        with pytest.raises(GenerationError) as e:
            _teacher(url + "/v1", "gpt-4o", KEY_VAR).answer(_q(), 1, "zhang")
    msg = str(e.value)
    assert "HTTP 401" in msg and "Incorrect API key provided" in msg and url in msg and KEY not in msg


def test_run_cot_stops_on_an_error_reply_instead_of_keeping_empty_samples(smoke_world, tmp_path, no_proxy):
    """Before: choices [] -> no samples -> all([]) is True -> the item 'kept' -> IndexError on rs[0]."""
    from mirg_lib.cot import CotConfig, run_cot

    with _endpoint(lambda _: (200, {}, {"error": {"message": "quota exceeded"}})) as (url, _):
        cfg = CotConfig(teacher="model", teacher_model="m", tasks=["single_refer"], max_items_per_task=1, styles=["zhang"])
        with pytest.raises(GenerationError, match="quota exceeded"):
            run_cot(cfg, smoke_world.root, tmp_path / "cot", generation=GenerationConfig(backend="openai", base_url=url + "/v1", retries=0))
    assert not (tmp_path / "cot").exists()


def test_an_item_with_fewer_samples_than_asked_is_never_kept(smoke_world, tmp_path):
    """The 4-of-4 filter needs exactly n_samples right samples: none (vacuous all()) or 3 right ones are not 4 of 4."""
    from mirg_lib.cot import CotConfig, run_cot

    perfect = ScriptedTeacher(error_rate=0.0, box_jitter=0.0)

    class Short:
        def answer(self, items, n_samples, style):
            out = perfect.answer(items, n_samples, style)
            return [[], out[1][:3], *out[2:]]

    cfg = CotConfig(tasks=["single_refer"], max_items_per_task=5, styles=["zhang"], error_rate=0.0)
    res = run_cot(cfg, smoke_world.root, tmp_path / "cot", Short())
    assert res.table[0]["candidates"] == 5 and res.table[0]["zhang kept"] == 3
    samples = [json.loads(line) for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    kept = {json.loads(line)["id"] for line in (tmp_path / "cot" / "sft_zhang.jsonl").read_text().splitlines()}
    assert all(samples[1]["correct"]) and len(samples[1]["samples"]) == 3  # its 3 samples are right, still not kept
    assert kept == {s["id"] for s in samples[2:]}


@pytest.mark.parametrize("code, target_host", [(302, "127.0.0.2"), (307, "127.0.0.2"), (301, "localhost")])
def test_a_redirect_is_an_error_naming_its_target_and_the_key_never_goes_there(code, target_host, monkeypatch, no_proxy):
    monkeypatch.setenv(KEY_VAR, KEY)
    bind = "127.0.0.1" if target_host == "localhost" else target_host
    try:
        socket.socket().bind((bind, 0))
    except OSError:
        pytest.skip(f"{bind} is not a loopback address here (macOS configures only 127.0.0.1)")
    with _endpoint(lambda body: (200, {}, _completion(1)), host=bind) as (other, other_seen):
        port = other.rsplit(":", 1)[1]
        target = f"http://{target_host}:{port}/v1/chat/completions"
        with _endpoint(lambda _: (code, {"Location": target}, b""), host="127.0.0.1") as (url, seen):
            if code == 302:  # the setup can see a leak: urllib's default opener follows and forwards the header
                req = urllib.request.Request(url + "/v1/chat/completions", data=b"{}", headers={"Authorization": f"Bearer {KEY}"})
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5).close()
                assert other_seen and other_seen[-1]["auth"] == f"Bearer {KEY}"
                other_seen.clear()
            teacher = _teacher(url + "/v1", "gpt-4o", KEY_VAR)
            with pytest.raises(GenerationError, match=f"HTTP {code}.*{target_host}:{port}") as e:
                teacher.answer(_q(), 1, "zhang")
    assert other_seen == []  # nothing at all went to the other host, so no Authorization header either
    assert seen[-1]["auth"] == f"Bearer {KEY}" and KEY not in str(e.value) and "another host" in str(e.value)


def test_reassembly_gives_each_read_out_object_the_image_it_was_read_from(smoke_world):
    """MIRG-RL's reassembly of a words-only reply: every object read out under "Image N:" becomes
    <bbox_id>[N-M]</bbox_id> with scene image N's object M (in reading order) of that very description, and
    the answer is the target's id and box."""
    import re

    from mirg_lib.cot import reassemble
    from mirg_lib.teacher import _reading_order, object_words

    items, rows = _items(smoke_world)
    replies = ScriptedTeacher(error_rate=0.0, box_jitter=0.0).answer(items, 1, "mirg_text")
    checked = 0
    for row, (reply,) in zip(rows, replies, strict=True):
        if row["task"] not in ("diff", "refer_grounding") or len(row["images"]) < 2:
            continue
        out = reassemble(reply, row)
        think = parse_response(out).think
        for n, listing in re.findall(r"Image (\d): (.*?)\.(?= |$)", think):
            ids = re.findall(r"<bbox_id>\[(\d)-(\d+)\]</bbox_id>(?:<\|object_ref_start\|>([^<]*)<\|object_ref_end\|>)?", listing)
            assert ids, (listing, out)
            for img, m, desc in ids:
                assert img == n, (listing, out)  # read from image N, so an object of image N
                obj = _reading_order(row["images"][int(img) - 1])[int(m) - 1]
                assert not desc or desc == object_words(obj), (desc, obj)
                checked += 1
        p = parse_response(out)
        assert p.trajectory[-1].image == row["target_image"], out
    assert checked > 20


def test_the_base_models_curriculum_texts_are_pinned(smoke_world):
    """The base model reads the scripted teacher's replies (its tokenizer's corpus, its language phase) with
    the teacher's defaults; a change to them changes what a retrained base reads, so the shipped base would no
    longer be what its params make. This digest of those texts on the smoke world was the same before the box
    notation was added; a deliberate change updates it and says so in docs/log.md."""
    import hashlib

    from mirg_lib.base_model import language_texts, tokenizer_corpus
    from mirg_lib.items import load_pool_items

    h = hashlib.sha256()
    for t in tokenizer_corpus(load_pool_items(smoke_world.train_file), n_teacher=60):
        h.update(t.encode() + b"\0")
    for prompt, reply in language_texts(smoke_world.root, 60):
        h.update(prompt.encode() + b"\1" + reply.encode())
    assert h.hexdigest() == "97b6eddbd545fdf47dfef41dfffd1053c9e2c26fd09c10b338baa7f781f88210"
