"""Where a client's DP randomness comes from: the secret generator, never the public seed.

`train_locally` seeds torch's global RNG from the public round seed (dropout, masking) and
hands a secret generator to Opacus for the Poisson masks and the noise. With a batch size
equal to the number of records the sample rate is 1, so the masks are fixed and the noise is
the only thing the secret generator can change: same public seed, different secret generators
must release different weights; the same secret seed must release the same weights (nothing
else random is left unseeded).
"""

from __future__ import annotations

import copy

import torch

from client.dp_training import DpSettings, train_locally
from common.tasks import get_task


def _trained(model, records, dp_seed: int) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    settings = DpSettings(noise_multiplier=1.0, clip_norm=1.0, batch_size=len(records[0]),
                          local_steps=2, learning_rate=1e-2, grad_sample_mode="ghost")
    result = train_locally(model, records, get_task("mlm").per_record_loss, settings, seed=7,
                           dp_generator=torch.Generator().manual_seed(dp_seed))
    assert result.sample_rate == 1.0  # every record in every batch: the masks are fixed
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_noise_comes_from_the_secret_generator_not_the_public_seed(tiny_mlm, icd_batch):
    model = tiny_mlm.float()
    first, again = _trained(model, icd_batch, 1), _trained(model, icd_batch, 1)
    other = _trained(model, icd_batch, 2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
