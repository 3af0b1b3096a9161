"""The generation backends side by side on one model: ``hf`` batched, ``openai`` against a real server on
loopback (``transformers serve``), and rejection sampling's items per second.

    python bench/backend_speed.py --out bench/results/backend_speed_cpu.json      # the shipped base, 40 questions
    python bench/backend_speed.py --checkpoint /models/Qwen2.5-VL-7B-Instruct --items-per-task 20 --bf16

The questions are MIG-Bench items of the smoke world (drawn into a temporary folder) or of ``--bench``.
Every pass is :func:`mirg_lib.backends.generate` on the same questions, greedy:

* ``hf``: batches of ``--batch-size`` in this process;
* ``openai``: ``transformers serve`` started on loopback with the checkpoint, ``--concurrency`` requests in
  flight (1 and the given one). Its replies are compared with the ``hf`` ones as they are and with the white
  space at their ends taken off (the server strips it); it decodes with ``skip_special_tokens``, which drops
  Qwen's box tokens where a tokenizer marks them special (the project's small models' tokenizers do not);
* rejection sampling: ``--k`` samples per question at temperature 0.7 on ``hf`` (batches of ``--batch-size``
  prompts), in questions per second.

Prints one JSON object: device, date, commit, the model, the seconds and questions per second of each pass,
and how many replies equal the ``hf`` ones.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def serve(checkpoint: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``transformers serve`` on loopback with ``checkpoint``; its process and its /v1 URL once it answers."""
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        raise SystemExit("the transformers CLI is not installed here (pip install 'transformers[serving]')")
    from mirg_lib.launch import free_port

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([str(exe), "serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115 - the server's log, open while it runs
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url + "/v1"
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"transformers serve did not come up in 120 s (log: {log})")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="", help="a model folder (default: the shipped embedded base)")
    ap.add_argument("--bench", default="", help="a MIG-Bench file (default: the smoke world's, drawn here)")
    ap.add_argument("--items-per-task", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--k", type=int, default=8, help="rejection sampling: samples per question")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from mirg_lib.backends import GenerationConfig, HFBackend, Request, Sampling, generate
    from mirg_lib.config import load_params, stage_config
    from mirg_lib.formats import load_mig_bench
    from mirg_lib.items import first_per_task
    from mirg_lib.paths import ROOT
    from mirg_lib.prompts import with_suffix
    from mirg_lib.results import provenance, report

    ckpt = Path(args.checkpoint) if args.checkpoint else ROOT / "checkpoints" / "embedded-base"
    tmp = Path(tempfile.mkdtemp(prefix="mirg-backend-speed-"))
    if args.bench:
        bench = Path(args.bench)
    else:
        from mirg_lib.world import DataConfig, run_data_synthesis

        world = run_data_synthesis(stage_config(DataConfig, load_params("smoke"), "data"), tmp / "data", progress=False)
        bench = world.test_file
    records = first_per_task(load_mig_bench(bench), None, args.items_per_task)
    requests = [Request(with_suffix(r.question, "plain"), tuple(str(bench.parent / p) for p in r.images)) for r in records]
    greedy = Sampling(max_new_tokens=args.max_new_tokens)
    hf = HFBackend(str(ckpt), batch_size=args.batch_size, dtype="bfloat16" if args.bf16 else "float32")
    hf.load()
    generate(GenerationConfig(), ckpt, requests[:2], greedy, None, stage="eval", per_batch=2, backend=hf, progress="")  # warm-up
    runs: dict[str, dict] = {}

    def timed(name: str, fn) -> list[list[str]]:
        t = time.perf_counter()
        out = fn()
        s = time.perf_counter() - t
        runs[name] = {"seconds": round(s, 2), "questions_per_s": round(len(requests) / s, 3)}
        return out

    base = timed("hf", lambda: generate(GenerationConfig(), ckpt, requests, greedy, None, stage="eval", per_batch=args.batch_size, backend=hf, progress=""))
    runs["hf"]["batch_size"] = args.batch_size
    proc, url = serve(ckpt, tmp / "serve.log")
    try:
        for c in sorted({1, args.concurrency}):
            gen = GenerationConfig(backend="openai", base_url=url, concurrency=c, timeout_s=600)
            served = timed(f"openai_c{c}", lambda gen=gen: generate(gen, ckpt, requests, greedy, None, stage="eval", per_batch=64, progress=""))
            runs[f"openai_c{c}"].update(concurrency=c, same_as_hf=sum(a == b for a, b in zip(base, served, strict=True)),
                                        same_as_hf_but_end_spaces=sum(a[0].strip() == b[0].strip() for a, b in zip(base, served, strict=True)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    sampled = [Request(r.text, r.images, args.k) for r in requests]
    per_batch = max(1, args.batch_size // args.k)
    timed("rejection_sampling_hf", lambda: generate(GenerationConfig(), ckpt, sampled, Sampling(temperature=0.7, max_new_tokens=args.max_new_tokens, seed=0),
                                                     None, stage="rejection", per_batch=per_batch, backend=hf, progress=""))
    runs["rejection_sampling_hf"].update(k=args.k, samples_per_s=round(runs["rejection_sampling_hf"]["questions_per_s"] * args.k, 3))
    result = {**provenance(), "model": str(ckpt), "bench": str(bench), "questions": len(requests), "max_new_tokens": args.max_new_tokens,
              "dtype": "bf16" if args.bf16 else "fp32", **runs}
    return report(result, args.out)


if __name__ == "__main__":
    main()
