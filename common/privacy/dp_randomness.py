"""Where DP randomness comes from: a secret per-message source, or (simulation switch) the seed.

DP noise and the sampling that amplification relies on (Poisson masks on a node, Poisson client
sampling and client-level noise on the server) must be secret from everyone the guarantee is
stated against, the server included: whoever can reproduce them can recompute a release for any
candidate data set and tell neighbours apart with certainty. So they are drawn from generators
seeded from the operating system's CSPRNG, per message (node) or per server process, never
stored, logged or sent. The run's public `seed` keeps fixing everything that may be public:
splits, initialisation, masking, augmentation, dropout.

`reproducible-noise=true` (simulation only) seeds them from the run seed instead, for
bit-for-bit repeatable experiments; everything it touches is stamped "no DP guarantee".

Floating-point caveat: the noise is torch's Gaussian sampler (a Mersenne Twister state seeded
with 64 secret bits, then floating-point transforms), not a cryptographically secure, exactly
discretised sampler. Opacus's `secure_mode` would use one but needs torchcsprng, which has no
wheel for this torch; floating-point attacks on Gaussian samplers (e.g. Jin et al. 2022,
"Are we there yet? Timing and floating-point attacks on differential privacy systems") are
outside what fedssl defends against.
"""

from __future__ import annotations

import os
import random
import secrets

import torch


def secret_generator() -> torch.Generator:
    """A torch generator seeded with 64 bits from the OS CSPRNG (the seed is never kept)."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def seeded_generator(seed: int) -> torch.Generator:
    """Reproducible DP randomness: only behind the `reproducible-noise` simulation switch."""
    return torch.Generator().manual_seed(seed)


def secret_sampler() -> random.Random:
    """Python's `random.Random` interface over the OS CSPRNG (for client sampling)."""
    return secrets.SystemRandom()
