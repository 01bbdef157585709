"""Client-level DP (DP-FedAvg, McMahan et al. 2018): each client's update is clipped to S,
the server adds Gaussian noise z·S to their sum, and clients are sampled independently.

Why fedssl does not wrap Flower's `DifferentialPrivacy{Server,Client}SideFixedClipping`:
* they sample a fixed number of clients (FedAvg's sampler). Amplification by subsampling, the
  `q` in the accountant, needs each client included independently (Poisson); with a fixed
  count fedssl accounts with q = 1 ("no amplification"), never with the sampled fraction;
* they aggregate with FedAvg's num-examples-weighted mean and demand equal weights; a weight
  computed from a client's data changes its sensitivity, so DP-FedAvg uses a plain sum over a
  fixed denominator instead;
* they require exactly the sampled number of replies, so one refused or rejected client
  aborts the round; with a fixed denominator it is simply a zero contribution;
* their accountant (`flwr.serverapp.RdpAccountant`) supports only no amplification.
Flower's `compute_stdv` (noise std on the mean; a Flower internal, server/flower_internals.py)
is reused. The accounting is the same PLD accountant as record-level DP, under add/remove-one
client, fed one (z, q, 1) event per round, written to the ledger (server/run_ledger.py).

Sampling and noise come from secret generators (common/privacy/dp_randomness.py, drawn by
server/update_fedavg.py): only the simulation switch `reproducible-noise` seeds them from the
run seed, and every output then says there is no DP guarantee.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from common.model_updates import State
from common.privacy.ledger import GAUSSIAN_NO_AMPLIFICATION, POISSON_GAUSSIAN
from server.flower_internals import compute_stdv


@dataclass(frozen=True)
class ClientDpSettings:
    """Parameters of client-level DP for one run."""

    noise_multiplier: float  # z: noise std is z·S on the sum of updates
    clip_norm: float  # S: bound on each client's update norm
    sample_rate: float  # q in the accountant; 1.0 = no amplification claimed
    poisson: bool  # clients sampled independently with probability q

    @property
    def mechanism(self) -> str:
        """Ledger mechanism name."""
        return POISSON_GAUSSIAN if self.poisson else GAUSSIAN_NO_AMPLIFICATION


def poisson_sample(node_ids: list[int], rate: float, rng: random.Random) -> list[int]:
    """Each node independently with probability `rate` (the count varies, may be 0)."""
    return [node for node in sorted(node_ids) if rng.random() < rate]


def noisy_mean_update(
    updates: list[State], reference: State, denominator: float,
    settings: ClientDpSettings, generator: torch.Generator,
) -> State:
    """(Σ Δ_i + N(0, (z·S)²)) / denominator, with a denominator fixed before sampling.

    `updates` must already be clipped to S (the server checks); `reference` gives the keys
    and shapes, so a round with no usable update still releases (and accounts) pure noise.
    """
    std = compute_stdv(settings.noise_multiplier, settings.clip_norm, denominator)  # type: ignore[arg-type]
    mean: State = {}
    for key, like in reference.items():
        if not like.is_floating_point():  # integer buffers are not trained, never averaged
            mean[key] = torch.zeros_like(like)
            continue
        total = torch.zeros(like.shape, dtype=torch.float32)
        for update in updates:
            total += update[key].to(torch.float32)
        noise = torch.normal(0.0, std, size=like.shape, generator=generator)
        mean[key] = (total / denominator + noise).to(like.dtype)
    return mean
