"""How loud is DP-SGD's noise next to the signal it protects, for the text study's clients?

For one client with N records, batch size B (Poisson rate q = 1/⌈N/B⌉, expected batch N·q ≤ B), T planned DP-SGD steps
and a target ε at δ: σ is calibrated exactly as a client calibrates it
(`common.privacy.accounting.calibrate_noise_multiplier`: PLD, replace-one neighbours; before
the ledger's format 2 this table was made with RDP, add/remove). One noisy step adds a Gaussian
of norm ≈ σ·C·√d to the sum of B clipped per-record gradients, whose norm is at most B·C (all
records agreeing). The ratio

    noise / signal ≥ σ·√d / B

is therefore a *lower* bound on how much the noise dominates a step (real per-record
gradients disagree, so the real signal is smaller). FedAvg over K clients averages K
independent noises, which divides the ratio of the average by about √K. d is the number of
trained (noised) parameters: the default text model has 1,340,928, of which 1,052,672 are the
vocabulary matrices that `freeze-embeddings` leaves out (288,256 remain); with `init=minilm`
only the LoRA adapters and the objective's head are trained (docs/public-encoders.md).

    .venv/bin/python benchmarks/dp_noise_to_signal.py            # Markdown table
    .venv/bin/python benchmarks/dp_noise_to_signal.py --records 15000 --epsilon 8
    .venv/bin/python benchmarks/dp_noise_to_signal.py --records 2880 --batches 64 256 \
        --steps 30 300        # the public-encoder sweep's clients

No training runs: this is accounting arithmetic, seconds on any machine.
"""

from __future__ import annotations

import argparse
import math

from common.privacy.accounting import REPLACE_ONE, calibrate_noise_multiplier

# Trained (noised) parameters d of each model, counted from the models (docs/public-encoders.md).
TRAINED = {
    "tiny, all trained": 1_340_928,
    "tiny, frozen vocabulary": 288_256,
    "MiniLM mlm + LoRA r8": 480_384,
    "MiniLM contrastive + LoRA r8": 381_056,
    "MiniLM contrastive + FFA-LoRA r8": 215_168,
}
BATCHES = (64, 128, 512, 2048)
STEPS = (60, 600, 3000)


def noise_to_signal(records: int, batch: int, steps: int, epsilon: float, delta: float,
                    trained: int) -> tuple[float, float]:
    """(σ, σ·√d / B) for one client; q = 1/⌈N/B⌉ as Opacus' Poisson loader uses."""
    rate = 1.0 / math.ceil(records / batch)
    sigma = calibrate_noise_multiplier(epsilon, delta, rate, steps, REPLACE_ONE)
    return sigma, sigma * math.sqrt(trained) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=15_000, help="records of one client")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clients", type=int, default=5, help="K, for the FedAvg column")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    args = parser.parse_args()
    print(f"One client, N = {args.records} records, target ε = {args.epsilon} at δ = "
          f"{args.delta} (PLD, replace-one); FedAvg over K = {args.clients} clients.\n")
    print("| batch B | steps T | epochs | σ | trained | d | noise/signal | after FedAvg |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        for steps in args.steps:
            if batch >= args.records:
                continue
            epochs = steps * batch / args.records
            for name, trained in TRAINED.items():
                sigma, ratio = noise_to_signal(args.records, batch, steps, args.epsilon,
                                               args.delta, trained)
                print(f"| {batch} | {steps} | {epochs:.1f} | {sigma:.2f} | {name} | "
                      f"{trained:,} | {ratio:.1f} | {ratio / math.sqrt(args.clients):.2f} |")


if __name__ == "__main__":
    main()
