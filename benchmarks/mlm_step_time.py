"""Time one DP-SGD step of the `mlm` task per Opacus grad_sample_mode and model lever.

Each arm (mode × lever × threads) runs in its own Python process, which builds the task's
model twice from the same seed: a plain copy (the non-private step) and one wrapped by
`PrivacyEngine.make_private` as the client wraps it (Adam, σ = 1, C = 1, fixed batch via
`poisson_sampling=False` so every step has the same size). It first measures peak memory
(non-private steps, then DP steps: `ru_maxrss` minus RSS before the first step), then times
REPS interleaved pairs (one non-private step, one DP step) and reports medians, so machine load
hits both sides alike. A step is zero_grad → mask → per-record loss → mean → backward →
(clip, noise) → Adam step; masking is inside the step, as in the client.

    .venv/bin/python benchmarks/mlm_step_time.py                  # default grid, Markdown
    .venv/bin/python benchmarks/mlm_step_time.py --grid levers    # model levers at 2 threads
    .venv/bin/python benchmarks/mlm_step_time.py --arm ghost --threads 2 --freeze word

Levers: `--vocab N` (ids are folded into N, a cost-only proxy for a smaller vocabulary),
`--freeze word` (word embeddings frozen: no per-sample gradient for them), `--freeze
word+decoder` (the decoder matrix frozen too, its bias trained), `--batch B`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("hooks", "functorch", "ew", "ghost")
WARMUP = 2
REPS = 8
# (label, extra args): the default config per mode and threads, then levers at 2 threads.
GRIDS = {
    "modes": [(f"{m}", ["--arm", m, "--threads", str(t)]) for t in (1, 2) for m in MODES],
    "levers": [
        (f"{m}, {label}", ["--arm", m, "--threads", "2", *args])
        for m in ("hooks", "ghost")
        for label, args in (
            ("batch 256", ["--batch", "256"]),
            ("frozen word emb.", ["--freeze", "word"]),
            ("vocab 1024", ["--vocab", "1024"]),
            ("frozen word emb. + decoder", ["--freeze", "word+decoder"]),
        )
    ],
}


class PassThrough:
    """Ghost mode's "criterion": returns the per-record losses it is given."""

    reduction = "mean"

    def __call__(self, losses, *_):
        return losses


def _current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _batch(size: int, vocab: int, max_length: int):
    """`size` real ICD-10 descriptions, tokenized with the shipped vocabulary."""
    import torch

    from common.data.icd10_corpus import load_icd10_records
    from common.data.tokenizer import SEP_ID, encode_texts, load_tokenizer  # shipped ids

    records = load_icd10_records()
    step = len(records.texts) // size
    ids, mask = encode_texts(load_tokenizer(), records.texts[::step][:size], max_length)
    if vocab < load_tokenizer().get_vocab_size():
        special = ids <= SEP_ID + 1
        ids = torch.where(special, ids, SEP_ID + 2 + ids % (vocab - SEP_ID - 2))
    return ids, mask


def run_arm(mode: str, threads: int, batch: int, vocab: int, freeze: str) -> dict:
    """Median non-private and DP step times (ms) and peak extra memory (MiB) of one arm."""
    import copy

    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from common.run_config import RunConfig
    from common.tasks.mlm import build_mlm_model, per_record_loss

    torch.set_num_threads(threads)
    config = RunConfig()
    records = _batch(batch, vocab, config.max_length)
    torch.manual_seed(0)
    model = build_mlm_model(config.model_shape, vocab)
    if freeze in ("word", "word+decoder"):
        model.mlm.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    if freeze == "word+decoder":  # only the decoder's bias stays trainable
        model.mlm.cls.predictions.decoder.weight.requires_grad_(False)
    plain = copy.deepcopy(model)
    plain_opt = torch.optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=1e-3)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(TensorDataset(*records), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        wrapped = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode,
            **({"criterion": PassThrough()} if mode == "ghost" else {}))
    private, dp_opt = wrapped[0], wrapped[1]
    criterion = wrapped[2] if mode == "ghost" else (lambda losses: losses.mean())
    generator = torch.Generator().manual_seed(1)

    def step(net, opt, reduce) -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reduce(per_record_loss(net, records, generator)).backward()
        opt.step()
        return time.perf_counter() - start

    def plain_mean(losses):
        return losses.mean()

    baseline = _current_rss_kib()
    for _ in range(WARMUP):
        step(plain, plain_opt, plain_mean)
    nodp_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(WARMUP):
        step(private, dp_opt, criterion)
    dp_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    nodp_ms, dp_ms = [], []
    for _ in range(REPS):
        nodp_ms.append(1000 * step(plain, plain_opt, plain_mean))
        dp_ms.append(1000 * step(private, dp_opt, criterion))
    return {"mode": mode, "threads": threads, "batch": batch, "vocab": vocab, "freeze": freeze,
            "nodp_ms": statistics.median(nodp_ms), "dp_ms": statistics.median(dp_ms),
            "ratio": statistics.median(d / n for d, n in zip(dp_ms, nodp_ms)),
            "nodp_mib": max(nodp_peak - baseline, 0) / 1024,
            "dp_mib": max(dp_peak - baseline, 0) / 1024,
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="modes")
    parser.add_argument("--arm", choices=MODES, help="run one arm in this process (JSON out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--freeze", choices=("none", "word", "word+decoder"), default="none")
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.threads, args.batch, args.vocab, args.freeze)))
        return
    rows = []
    for label, extra in GRIDS[args.grid]:
        done = subprocess.run([sys.executable, __file__, *extra], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            print(f"{label} failed: {tail[0]}", file=sys.stderr)
            continue
        rows.append((label, json.loads(done.stdout.strip().splitlines()[-1])))
        print(label, rows[-1][1], file=sys.stderr)
    import torch

    print(f"\n{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"median of {REPS} interleaved pairs after {WARMUP} warm-up steps each\n")
    print("| arm | threads | batch | non-private (ms) | DP (ms) | DP ÷ non-private | "
          "peak extra MiB non-private / DP | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['threads']} | {r['batch']} | {r['nodp_ms']:.0f} | "
              f"{r['dp_ms']:.0f} | {r['ratio']:.2f} | {r['nodp_mib']:.0f} / {r['dp_mib']:.0f} "
              f"| {r['load']:.1f} |")


if __name__ == "__main__":
    main()
