"""Where a client's DP randomness comes from: the secret generator, never the public seed.

`train_locally` seeds torch's global RNG from the public round seed (dropout, masking) and
hands a secret generator to Opacus for the Poisson masks and the noise. With a batch size
equal to the number of records the sample rate is 1, so the masks are fixed and the noise is
the only thing the secret generator can change: same public seed, different secret generators
must release different weights; the same secret seed must release the same weights (nothing
else random is left unseeded). At q < 1 the masks are checked on their own: which records
each step samples follows the secret seed and ignores the public one.
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


def _sampled(dp_seed: int, public_seed: int) -> list[list[int]]:
    """Which records each of 12 DP-SGD steps trained on, at q = 0.1 (40 records, batch 4)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    ids = torch.arange(40, dtype=torch.float32)
    records = (torch.stack([ids, torch.ones(40)], dim=1),)
    batches: list[list[int]] = []

    def per_record_loss(net, batch, generator):
        batches.append(batch[0][:, 0].long().tolist())  # the records this step sampled
        return net(batch[0]).squeeze(1) ** 2

    settings = DpSettings(noise_multiplier=1.0, clip_norm=1.0, batch_size=4, local_steps=12,
                          learning_rate=1e-2)
    result = train_locally(model, records, per_record_loss, settings, seed=public_seed,
                           dp_generator=torch.Generator().manual_seed(dp_seed))
    assert result.sample_rate == 0.1
    return batches  # empty Poisson batches never reach the loss: the list is the selection


def test_the_poisson_masks_come_from_the_secret_generator_not_the_public_seed():
    """Which records are sampled is decided by the secret generator alone: another secret
    seed selects other records under the same public seed, the same secret seed selects the
    same records whatever the public seed (so whoever knows it learns nothing of the sample)."""
    first = _sampled(dp_seed=1, public_seed=7)
    assert first and sum(map(len, first)) < 12 * 40  # a sample, not every record
    assert _sampled(dp_seed=1, public_seed=7) == first
    assert _sampled(dp_seed=2, public_seed=7) != first
    assert _sampled(dp_seed=1, public_seed=8) == first
