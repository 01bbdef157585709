"""A user's mostly (or wholly) unlabelled records in simulation: pretraining-only runs, errors
that say the fix, and a client split that stays balanced when few records carry a label."""

from __future__ import annotations

import json

import numpy as np
import pytest
from simulation_runs import TINY_RUN, simulate, write_text_folder

from common.data.partitioning import SplitSettings, dirichlet_partition, plan_splits
from common.data.run_splits import image_splits, text_splits
from common.run_config import ConfigError, RunConfig
from common.tasks import check_run_data


def _plain_folder(folder, records: int = 60):
    """A folder of .txt records only: nothing labelled."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("".join(f"visit {i} went well\n" for i in range(records)))
    return folder


def test_an_unlabelled_folder_pretrains_only_with_downstream_false(tmp_path):
    folder = _plain_folder(tmp_path / "plain")
    with pytest.raises(ConfigError, match="set downstream=false") as caught:
        text_splits(RunConfig(data=str(folder), num_clients=3))
    assert caught.value.key == "data"
    config = RunConfig(data=str(folder), num_clients=3, downstream=False)
    check_run_data(config)  # the `fedssl simulate` edge check accepts it
    splits = text_splits(config)
    assert splits.test_texts == [] and splits.labeled_texts == [] and splits.label_names == []
    assert sorted(t for c in splits.client_texts for t in c) \
        == sorted(f"visit {i} went well" for i in range(60))
    assert max(map(len, splits.client_texts)) - min(map(len, splits.client_texts)) <= 1


def test_unlabelled_images_pretrain_only_with_downstream_false(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "batch.npy", rng.integers(0, 255, (30, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="downstream=false"):
        image_splits(RunConfig(task="mae", data=str(tmp_path), num_clients=3), "mnist5k")
    config = RunConfig(task="mae", data=str(tmp_path), num_clients=3, downstream=False)
    check_run_data(config)
    splits = image_splits(config, "mnist5k")
    assert len(splits.test_labels) == 0 and sum(len(c) for c in splits.client_images) == 30


def test_too_small_label_fraction_names_the_value_that_works(tmp_path):
    folder = write_text_folder(tmp_path / "data", records=60)  # 30 labelled, 3 classes
    config = RunConfig(data=str(folder), num_clients=3, label_fraction=0.01)
    with pytest.raises(ConfigError) as caught:
        text_splits(config)
    message = str(caught.value)
    assert caught.value.key == "label-fraction" and "downstream=false" in message
    suggested = float(message.split("label-fraction=")[1].split()[0])
    splits = text_splits(config.replace(label_fraction=suggested))  # the advice works
    assert set(splits.labeled_labels.tolist()) == {0, 1, 2}
    # Pretraining only: the same split is fine without any server labels.
    assert text_splits(config.replace(downstream=False)).labeled_texts == []
    with pytest.raises(ConfigError, match="downstream=false") as caught:
        text_splits(config.replace(test_fraction=0.01))
    assert caught.value.key == "test-fraction"


def _settings(**values) -> SplitSettings:
    base = {"seed": 0, "test_fraction": 0.2, "label_fraction": 0.1, "num_clients": 5,
            "dirichlet_alpha": 0.5}
    return SplitSettings(**{**base, **values})


def test_a_mostly_unlabelled_pool_is_split_evenly_and_its_labels_stay_skewed():
    """The shape a user met: ~3,000 labelled records in a pool of ~16,000 (Dirichlet with the
    unlabelled ones as one more class gave clients of 13,047 / 1,252 / 332 / 997 / 658)."""
    rng = np.random.default_rng(1)
    labels = np.concatenate([rng.integers(0, 19, 3_000), np.full(13_000, -1)])
    for seed in range(3):
        plan = plan_splits(labels, _settings(seed=seed, dirichlet_alpha=0.1))
        sizes = [len(p) for p in plan.clients]
        assert min(sizes) >= 2_600 and max(sizes) <= 1.5 * min(sizes), sizes
        unlabelled = [int(np.count_nonzero(labels[p] < 0)) for p in plan.clients]
        assert max(unlabelled) - min(unlabelled) <= 1  # dealt out evenly
        # The labelled part is still non-IID: class shares differ strongly between clients.
        shares = np.array([np.bincount(labels[p][labels[p] >= 0], minlength=19)
                           / max(1, np.count_nonzero(labels[p] >= 0)) for p in plan.clients])
        assert shares.max(axis=0).min() > 2 * shares.min(axis=0).max()
        covered = np.concatenate([plan.test, plan.labeled, *plan.clients])
        assert np.array_equal(np.sort(covered), np.arange(len(labels)))


def test_a_fully_labelled_pool_splits_exactly_as_before():
    """No unlabelled record: no extra draw, so the demo data's plan does not move."""
    labels = np.random.default_rng(2).integers(0, 7, 900)
    plan = plan_splits(labels, _settings())
    pool = np.sort(np.concatenate(plan.clients))
    # Replay the draws: test split, labelled split, then Dirichlet over the pool alone.
    rng = np.random.default_rng(0)
    from common.data.partitioning import stratified_split

    _, train = stratified_split(labels, 0.2, rng)
    _, rest = stratified_split(labels[train], 0.1, rng)
    assert np.array_equal(np.sort(train[rest]), pool)
    parts = dirichlet_partition(labels[pool], 5, 0.5, rng, 2)
    assert all(np.array_equal(pool[p], c) for p, c in zip(parts, plan.clients))


@pytest.mark.slow
def test_a_pretraining_only_simulation_on_unlabelled_records(tmp_path):
    folder = _plain_folder(tmp_path / "plain", records=120)
    tiny = {k: v for k, v in TINY_RUN.items() if k not in ("max-records", "label-fraction")}
    settings = {**tiny, "data": folder, "num-clients": 2, "num-rounds": 1,
                "downstream": "false"}
    result, leftovers = simulate(tmp_path / "run", settings)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not leftovers
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["arms"] == [] and summary["rounds_trained"] == 1
