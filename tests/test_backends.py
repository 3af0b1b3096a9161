"""The generation backends (mirg_lib.backends): the same greedy replies on every backend, an OpenAI-compatible
server that drops connections or answers broken JSON losing and repeating nothing, an interrupted run
resuming, and batches shared out over processes giving the one-process result byte for byte."""

import json
import os
import sys
from pathlib import Path

import pytest

from mirg_lib.backends import (
    GenerationConfig,
    GenerationError,
    HFBackend,
    OpenAIBackend,
    Request,
    Sampling,
    cache_dir,
    cached_replies,
    gather,
    generate,
    read_part,
    run_shard,
)
from mirg_lib.items import load_pool_items
from mirg_lib.prompts import with_suffix

sys.path.insert(0, str(Path(__file__).parent))
from hf_server import HFServer  # noqa: E402

GREEDY = Sampling(max_new_tokens=10)
SAMPLED = Sampling(temperature=1.0, max_new_tokens=6, seed=3)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def questions(smoke_world):
    """Seven questions of the smoke world, one to three images each."""
    pool = load_pool_items(smoke_world.train_file)
    picked = [it for it in pool if len(it.images) == 1][:3] + [it for it in pool if len(it.images) > 1][:4]
    return [Request(with_suffix(it.question, "zhang"), tuple(str(p) for p in it.images)) for it in picked]


@pytest.fixture(scope="module")
def model():
    """The shipped base: small (2.9 M parameters) and trained, so that its greedy replies differ by question."""
    from mirg_lib.paths import ROOT

    return ROOT / "checkpoints" / "embedded-base"


@pytest.fixture(scope="module")
def hf(model):
    backend = HFBackend(str(model), batch_size=4)
    backend.load()
    return backend


def _openai(url: str, **kw) -> GenerationConfig:
    return GenerationConfig(backend="openai", base_url=url, timeout_s=20, backoff_s=0.01, **kw)


@pytest.fixture(scope="module")
def hf_greedy(hf, model, questions):
    return generate(GenerationConfig(), model, questions, GREEDY, None, stage="eval", per_batch=4, backend=hf)


# ------------------------------------------------------------------------------------ the same replies


def test_every_backend_gives_the_same_greedy_replies(model, questions, hf_greedy):
    """hf (batched, left-padded) and openai (one request each, over HTTP, images as PNG data URLs) agree."""
    assert len(hf_greedy) == len(questions) and all(len(r) == 1 for r in hf_greedy)
    assert len({r[0] for r in hf_greedy}) > 1  # not one reply for everything
    with HFServer(model) as srv:
        served = generate(_openai(srv.url, concurrency=3), model, questions, GREEDY, None, stage="eval", per_batch=4)
    assert served == hf_greedy
    assert sorted(srv.answered) == sorted(q.text for q in questions)  # each asked once
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 10 and b["model"] == str(model) for b in srv.bodies)


def test_the_vllm_backend_is_run_where_vllm_is_installed(model, questions, hf_greedy):
    pytest.importorskip("vllm", reason="vLLM is not installed here (it needs a CUDA GPU); the vllm backend is not run")
    out = generate(GenerationConfig(backend="vllm"), model, questions, GREEDY, None, stage="eval", per_batch=4)
    assert out == hf_greedy


def test_sampling_means_the_same_on_the_openai_backend(model, questions):
    """n replies per question, seeded: the same run twice gives the same samples; a server that ignores `n`
    is asked again with the next seeds until each question has its n."""
    reqs = [Request(q.text, q.images, 3) for q in questions[:3]]
    with HFServer(model) as srv:
        a = generate(_openai(srv.url), model, reqs, SAMPLED, None, stage="rejection", per_batch=2)
        b = generate(_openai(srv.url), model, reqs, SAMPLED, None, stage="rejection", per_batch=2)
    assert a == b and [len(r) for r in a] == [3, 3, 3]
    assert len({t for r in a for t in r}) > 3  # sampled
    with HFServer(model, ignore_n=True) as srv:
        c = generate(_openai(srv.url), model, reqs, SAMPLED, None, stage="rejection", per_batch=2)
    assert [len(r) for r in c] == [3, 3, 3] and len(srv.answered) == 9
    seeds = sorted(b["seed"] for b in srv.bodies)
    assert len(set(seeds)) == 9  # every extra request with its own seed


def test_concurrency_is_not_bounded_by_the_stages_batches(model, questions, hf_greedy):
    """Rejection sampling's batches are 2 questions; on a server `concurrency` requests are in flight regardless."""
    with HFServer(model) as srv:
        out = generate(_openai(srv.url, concurrency=4), model, questions, GREEDY, None, stage="rejection", per_batch=1)
    assert out == hf_greedy and srv.most_in_flight == 4


# ------------------------------------------------------------------------- a server that misbehaves


@pytest.mark.parametrize("fault", ["drop", "cut", "malformed", "busy"])
def test_a_failed_request_is_retried_and_nothing_is_lost_or_repeated(fault, model, questions, hf_greedy, tmp_path):
    with HFServer(model, faults={2: fault, 5: fault}) as srv:
        out = generate(_openai(srv.url, concurrency=2), model, questions, GREEDY, tmp_path / "eval", stage="eval", per_batch=4)
    assert out == hf_greedy
    assert srv.posts == len(questions) + 2
    # each question's reply is in the cache once (a failed try leaves nothing)
    lines = [json.loads(line) for p in sorted(cache_dir(tmp_path / "eval").glob("part-*.jsonl")) for line in p.read_text().splitlines()[1:]]
    assert sorted(row["i"] for row in lines) == list(range(len(questions)))


def test_retries_run_out_with_a_clear_error(model, questions):
    with HFServer(model, faults={k: "busy" for k in range(1, 10)}) as srv:
        with pytest.raises(GenerationError, match=r"still failing after 3 tries: HTTP 503: the server is busy"):
            generate(_openai(srv.url, retries=2, concurrency=1), model, questions[:1], GREEDY, None, stage="eval", per_batch=1)
    assert srv.posts == 3


def test_an_interrupted_evaluation_resumes_and_asks_only_for_what_is_missing(model, smoke_world, tmp_path):
    """The server goes down for good after 4 answers: the stage stops with an error and writes no scores; run
    again against a healthy server at the same address, it asks only for the rest; the scores equal the hf backend's; the
    replies' cache is gone once the scores are written."""
    from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint

    cfg = EvalConfig(prompt="zhang", max_new_tokens=10, max_items_per_task=2, batch_size=3)
    out = tmp_path / "eval"
    with HFServer(model, down_after=4) as srv:
        with pytest.raises(GenerationError, match="503"):
            evaluate_checkpoint(model, smoke_world.test_file, cfg, out, generation=_openai(srv.url, retries=1, concurrency=1))
    assert not (out / "scores.json").exists() and not (out / "predictions.jsonl").exists()
    assert len(srv.answered) == 4
    with HFServer(model, port=int(srv.url.split(":")[2].split("/")[0])) as srv2:
        scores = evaluate_checkpoint(model, smoke_world.test_file, cfg, out, generation=_openai(srv2.url, concurrency=2))
    n = len((out / "predictions.jsonl").read_text().splitlines())
    assert n > 6 and len(srv2.answered) == n - 4
    hf_scores = evaluate_checkpoint(model, smoke_world.test_file, cfg, tmp_path / "eval_hf")
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "eval_hf" / "predictions.jsonl").read_text()
    assert (scores["backend"], hf_scores["backend"]) == ("openai", "hf")
    same = {k: v for k, v in scores.items() if "second" not in k and k != "backend"}
    assert same == {k: v for k, v in hf_scores.items() if "second" not in k and k != "backend"} and same["avg"] is not None
    assert not cache_dir(out).exists()


# -------------------------------------------------------------------------------------- the cache


def test_the_cache_reads_what_a_kill_left_and_refuses_what_is_broken(tmp_path):
    p = tmp_path / "part-000.jsonl"
    p.write_text('{"format": 1, "stamp": "s"}\n{"i": 0, "replies": ["a"]}\n{"i": 1, "replies": ["b"]}\n{"i": 2, "repl')
    assert read_part(p, "s") == {0: ["a"], 1: ["b"]}  # the torn last line is asked again
    assert read_part(p, "other") == {}  # another run's replies are not this one's
    p.write_text('{"format": 1, "stamp": "s"}\n{"i": 0, "replies": ["a"]}\nnot json\n{"i": 1, "replies": ["b"]}\n')
    with pytest.raises(ValueError, match=r"part-000.jsonl: line 3 is not a cached reply"):
        read_part(p, "s")
    p.write_text('{"format": 1, "stamp": "s"}\n{"i": 0, "replies": "a"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_part(p, "s")


def test_a_run_resumed_after_a_torn_line_keeps_every_reply(hf, questions, tmp_path):
    """A kill mid-write leaves half a line: the resumed run drops it (its question is asked again), appends after
    it, and the cache reads back whole; before, a row glued after the torn line made every later read fail."""
    from mirg_lib.backends import _PartWriter

    reqs = questions[:4]
    run_shard(hf, reqs, GREEDY, 2, tmp_path, "s", progress="")
    whole = gather(tmp_path, "s", 4)
    part = tmp_path / "part-000.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:10])  # header, questions 0 and 1, half of question 2's line
    assert set(read_part(part, "s")) == {0, 1}
    run_shard(hf, reqs, GREEDY, 2, tmp_path, "s", progress="")  # batch 1 (questions 2, 3) again
    assert gather(tmp_path, "s", 4) == whole
    w = _PartWriter(part, "s")
    w.add(9, ["x"])
    w.close()
    assert read_part(part, "s")[9] == ["x"] and len(read_part(part, "s")) == 5


def test_a_run_with_another_stamp_starts_its_part_file_over(hf, questions, tmp_path):
    run_shard(hf, questions[:2], GREEDY, 2, tmp_path, "one", progress="")
    assert set(cached_replies(tmp_path, "one")) == {0, 1}
    run_shard(hf, questions[:3], GREEDY, 2, tmp_path, "two", progress="")
    assert cached_replies(tmp_path, "one") == {} and set(cached_replies(tmp_path, "two")) == {0, 1, 2}


def test_a_resumed_hf_run_redoes_a_half_done_batch_whole_and_gets_the_same_samples(hf, questions, tmp_path):
    """Sampled replies depend on the batch: a batch with some replies cached is generated whole again, with its
    seed, so the result equals an uninterrupted run's."""
    reqs = [Request(q.text, q.images, 2) for q in questions]
    whole = tmp_path / "whole"
    run_shard(hf, reqs, SAMPLED, 3, whole, "s", progress="")
    expected = gather(whole, "s", len(reqs))
    part = tmp_path / "part"
    part.mkdir()
    lines = (whole / "part-000.jsonl").read_text().splitlines()
    (part / "part-000.jsonl").write_text("\n".join(lines[:5]) + "\n")  # batch 0 whole, batch 1 one of three
    run_shard(hf, reqs, SAMPLED, 3, part, "s", progress="")
    assert gather(part, "s", len(reqs)) == expected


def test_gather_names_what_is_missing(tmp_path):
    (tmp_path / "part-000.jsonl").write_text('{"format": 1, "stamp": "s"}\n{"i": 0, "replies": ["a"]}\n')
    with pytest.raises(GenerationError, match=r"2 of 3 questions have no replies \(first: \[1, 2\]\)"):
        gather(tmp_path, "s", 3)


def test_shards_on_two_ranks_equal_one_process(hf, questions, tmp_path):
    """Batch c goes to rank c % world with its own seed: two ranks' part files gathered give one process's
    replies, byte for byte."""
    reqs = [Request(q.text, q.images, 2) for q in questions]
    run_shard(hf, reqs, SAMPLED, 2, tmp_path / "one", "s", progress="")
    for rank in (1, 0):
        run_shard(hf, reqs, SAMPLED, 2, tmp_path / "two", "s", rank=rank, world=2, progress="")
    rows = [json.loads(line)["i"] for line in (tmp_path / "two" / "part-001.jsonl").read_text().splitlines()[1:]]
    assert rows == [2, 3, 6]  # batches 1 and 3
    assert gather(tmp_path / "two", "s", len(reqs)) == gather(tmp_path / "one", "s", len(reqs))


# ------------------------------------------------------------------------------------ settings


def test_stage_settings_lay_over_the_section():
    from mirg_lib.config import ConfigError, from_dict

    cfg = from_dict(GenerationConfig, {"backend": "hf", "stages": {"cot": {"backend": "openai", "base_url": "http://t/v1", "concurrency": 32}}}, "p [generation]")
    assert cfg.for_stage("eval").backend == "hf"
    cot = cfg.for_stage("cot")
    assert (cot.backend, cot.base_url, cot.concurrency, cot.stages) == ("openai", "http://t/v1", 32, {})
    with pytest.raises(ConfigError, match="unknown.*grpo"):
        from_dict(GenerationConfig, {"stages": {"grpo": {}}}, "p [generation]")
    with pytest.raises(ConfigError, match="needs generation.base_url"):
        from_dict(GenerationConfig, {"stages": {"eval": {"backend": "openai"}}}, "p [generation]").for_stage("eval")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(GenerationConfig, {"stages": {"eval": {"bakend": "openai"}}}, "p [generation]").for_stage("eval")


def test_the_vllm_backend_without_vllm_says_how_to_get_it(model, questions):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(RuntimeError, match="vLLM is not installed.*backend 'openai'"):
        generate(GenerationConfig(backend="vllm"), model, questions[:1], GREEDY, None, stage="eval", per_batch=1)


def test_the_openai_request_carries_the_sampling(tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(img)
    b = OpenAIBackend("http://h/v1", "m", extra_body={"skip_special_tokens": False})
    body = b.body(Request("q?", (str(img),), 2), Sampling(temperature=0.7, top_p=0.9, max_new_tokens=5), seed=7, n=2)
    assert {k: body[k] for k in ("model", "n", "temperature", "top_p", "max_tokens", "seed", "skip_special_tokens")} == {
        "model": "m", "n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": 7, "skip_special_tokens": False}
    content = body["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,") and content[1] == {"type": "text", "text": "q?"}
    greedy = b.body(Request("q?"), Sampling(top_p=0.5), seed=None, n=1)
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "seed" not in greedy


# ---------------------------------------------------------------- several processes (accelerate launch)


@pytest.mark.slow
def test_sampled_replies_on_two_processes_equal_one(model, questions, tmp_path, capfd):
    """The replies themselves, sampled (k = 3, rejection sampling's batches), from two launched processes and from
    one: equal."""
    from mirg_lib.launch import LaunchConfig

    reqs = [Request(q.text, q.images, 3) for q in questions]
    one = generate(GenerationConfig(), model, reqs, SAMPLED, tmp_path / "one", stage="rejection", per_batch=2, batch_size=6, dtype="float32")
    two = generate(GenerationConfig(), model, reqs, SAMPLED, tmp_path / "two", stage="rejection", per_batch=2, batch_size=6,
                   dtype="float32", launch=LaunchConfig(num_processes=2))
    assert "process 1 of 2" in capfd.readouterr().out
    assert len({t for r in one for t in r}) > 3 and two == one


@pytest.mark.slow
def test_rejection_sampling_on_two_processes_equals_one_byte_for_byte(model, smoke_world, tmp_path, capfd):
    from mirg_lib.launch import LaunchConfig
    from mirg_lib.rejection import RejectionConfig, run_rejection_sampling

    cfg = RejectionConfig(k=4, max_new_tokens=12, batch_size=8, tasks=["common_object", "single_refer"], max_items_per_task=5)
    one = run_rejection_sampling(cfg, model, smoke_world.root, tmp_path / "one")
    two = run_rejection_sampling(cfg, model, smoke_world.root, tmp_path / "two", launch=LaunchConfig(num_processes=2))
    assert (tmp_path / "two" / "rl_items.jsonl").read_bytes() == (tmp_path / "one" / "rl_items.jsonl").read_bytes()
    assert two.table == one.table
    assert json.loads((tmp_path / "two" / "table.json").read_text())["processes"] == 2
    assert not cache_dir(tmp_path / "two").exists()
    out = capfd.readouterr().out
    assert "[launch] rejection on 2 processes" in out and "process 1 of 2" in out and "process 0 of 2" in out


@pytest.mark.slow
def test_evaluation_on_two_processes_equals_one_byte_for_byte(model, smoke_world, tmp_path, capfd):
    from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint
    from mirg_lib.launch import LaunchConfig

    cfg = EvalConfig(prompt="zhang", max_new_tokens=12, max_items_per_task=3, batch_size=4)
    evaluate_checkpoint(model, smoke_world.test_file, cfg, tmp_path / "one")
    evaluate_checkpoint(model, smoke_world.test_file, cfg, tmp_path / "two", launch=LaunchConfig(num_processes=2))
    assert (tmp_path / "two" / "predictions.jsonl").read_bytes() == (tmp_path / "one" / "predictions.jsonl").read_bytes()
    assert os.path.getsize(tmp_path / "one" / "predictions.jsonl") > 0
    assert "process 1 of 2" in capfd.readouterr().out
