"""Time a DP-SGD step against a non-private step with adapters on a public encoder.

Builds the task's model twice from the same seed (`init=minilm` or a folder): a plain copy
(the non-private adapter step: same trainable parameters, plain Adam) and one wrapped by
`PrivacyEngine.make_private` as the client wraps it (σ = 1, C = 1, fixed batch). It then times
REPS interleaved pairs (one non-private step, one DP step) in this one process and reports
medians and their ratio, so machine load hits both sides alike. Measure on a quiet machine.

    .venv/bin/python benchmarks/adapter_step_time.py --task mlm --mode ghost
    .venv/bin/python benchmarks/adapter_step_time.py --task contrastive --adapter ffa-lora
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARMUP = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mlm", choices=("mlm", "contrastive"))
    parser.add_argument("--init", default="minilm")
    parser.add_argument("--adapter", default="lora", choices=("lora", "ffa-lora"))
    parser.add_argument("--mode", default=None, help="grad_sample_mode (default: the task's)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from opacus import PrivacyEngine
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
    from torch.utils.data import DataLoader, TensorDataset

    from common.data.demo_text import demo_splits
    from common.data.tokenizer import encode_texts, load_tokenizer
    from common.run_config import RunConfig
    from common.tasks import get_task, grad_sample_mode
    from common.tasks.mlm import tokenizer_path

    torch.set_num_threads(args.threads)
    config = RunConfig(task=args.task, init=args.init, adapter=args.adapter,
                       max_length=args.length, batch_size=args.batch)
    config.validate()
    task = get_task(args.task)
    mode = args.mode or grad_sample_mode(task, config)
    texts = demo_splits(config).client_texts[0][: args.batch]
    batch = encode_texts(load_tokenizer(tokenizer_path(config)), texts, args.length)

    torch.manual_seed(0)
    plain = task.build_model(config)
    torch.manual_seed(0)
    private = task.build_model(config)
    plain_opt = torch.optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(TensorDataset(*batch), batch_size=args.batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = PrivacyEngine(accountant="rdp").make_private(
            module=private,
            optimizer=torch.optim.Adam([p for p in private.parameters() if p.requires_grad],
                                       lr=1e-3),
            data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False, grad_sample_mode=mode)
    dp_model, dp_opt = wrapped[0], wrapped[1]
    generator = torch.Generator().manual_seed(1)

    def plain_step() -> None:
        plain_opt.zero_grad(set_to_none=True)
        task.per_record_loss(plain, batch, generator).mean().backward()
        plain_opt.step()

    def dp_step() -> None:  # as client/dp_training.py steps
        dp_opt.zero_grad(set_to_none=True)
        losses = task.per_record_loss(dp_model, batch, generator)
        loss = DPTensorFastGradientClipping(dp_model, dp_opt, losses, "mean") \
            if mode == "ghost" else losses.mean()
        loss.backward()
        dp_opt.step()

    times: dict[str, list[float]] = {"plain": [], "dp": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rep in range(WARMUP + args.reps):
            for name, step in (("plain", plain_step), ("dp", dp_step)):
                start = time.perf_counter()
                step()
                if rep >= WARMUP:
                    times[name].append(time.perf_counter() - start)
    plain_s, dp_s = statistics.median(times["plain"]), statistics.median(times["dp"])
    print(f"task {args.task}, init {args.init}, adapter {args.adapter}, mode {mode}, batch "
          f"{args.batch}, length {args.length}, threads {args.threads}, reps {args.reps}; "
          f"{platform.machine()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}")
    print(f"non-private step {plain_s:.3f} s | DP step {dp_s:.3f} s | ratio {dp_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
