"""DP randomness nobody else can reproduce: the real ClientApp and the real strategy release
something new every time from identical inputs (run seed included), and only the simulation
switch `reproducible-noise` makes them repeat — which every output then stamps as no guarantee.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from simulation_runs import SETTINGS, serve

from common.privacy.ledger import SECRET_NOISE, SEEDED_NOISE, LedgerEntry
from server.client_level_dp import ClientDpSettings, noisy_mean_update, poisson_sample
from server.update_fedavg import UpdateFedAvg

SEEDED = {**SETTINGS, "reproducible-noise": True}


def test_identical_client_messages_release_different_updates(tmp_path):
    first = serve(1, tmp_path / "a", node_id=11, settings={**SETTINGS,
                                                           "reproducible-noise": False})
    second = serve(1, tmp_path / "b", node_id=11, settings={**SETTINGS,
                                                            "reproducible-noise": False})
    assert first["status"] == second["status"] == "trained"
    differing = [k for k in first["update"] if first["update"][k] != second["update"][k]]
    assert len(differing) == len(first["update"])  # noise lands in every trained tensor
    assert {e["noise"] for e in first["ledger"]} == {SECRET_NOISE}


def test_the_switch_makes_client_updates_repeat_and_stamps_the_ledger(tmp_path):
    first = serve(1, tmp_path / "a", node_id=11, settings=SEEDED)
    second = serve(1, tmp_path / "b", node_id=11, settings=SEEDED)
    assert first["update"] == second["update"]
    assert {e["noise"] for e in first["ledger"]} == {SEEDED_NOISE}


def test_a_deployed_node_refuses_the_switch(tmp_path):
    """Only simulated nodes (partition-id) may draw noise from the run seed."""
    import client.app as client_app
    from common.run_config import RunConfig

    config = RunConfig.from_mapping(SEEDED)
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("Cholera due to Vibrio cholerae\n" * 20)
    context = Context(run_id=5, node_id=3, state=RecordDict(), run_config=config.to_mapping(),
                      node_config={"data-dir": str(data), "state-dir": str(tmp_path / "s")})
    message = Message(RecordDict({"arrays": ArrayRecord({}), "config": ConfigRecord({
        "server-round": 1})}), dst_node_id=3, message_type="train")
    reply = client_app.train(message, context)
    info = reply.content["fedssl"]
    assert info["status"] == "error" and "reproducible-noise" in info["reason"]
    assert "arrays" not in reply.content


def _strategy(reproducible: bool) -> UpdateFedAvg:
    return UpdateFedAvg(update_clip_norm=1.0, on_round=lambda *_: None, seed=0,
                       reproducible_noise=reproducible)


def test_server_sampling_and_client_level_noise_are_secret_unless_switched():
    nodes = list(range(1, 1001))
    settings = ClientDpSettings(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.5,
                                poisson=True)
    reference = {"w": torch.zeros(64)}

    def draws(strategy: UpdateFedAvg) -> tuple[list[int], torch.Tensor]:
        sample = poisson_sample(nodes, 0.5, strategy._rng)
        noise = noisy_mean_update([], reference, 10.0, settings, strategy._noise)["w"]
        return sample, noise

    secret_a, secret_b = draws(_strategy(False)), draws(_strategy(False))
    assert secret_a[0] != secret_b[0] and not torch.equal(secret_a[1], secret_b[1])
    seeded_a, seeded_b = draws(_strategy(True)), draws(_strategy(True))
    assert seeded_a[0] == seeded_b[0] and torch.equal(seeded_a[1], seeded_b[1])


def test_format_2_entries_hash_their_new_fields_and_format_1_entries_keep_their_hash():
    fields = {"run_id": "1", "round": 1, "node_id": "n", "guarantee": "record-level",
              "mechanism": "poisson-subsampled-gaussian", "noise_multiplier": 1.0,
              "sample_rate": 0.1, "steps": 3, "delta": 1e-5, "accountant": "rdp",
              "epsilon": 1.0, "max_epsilon": 0.0, "timestamp": "2026-01-01T00:00:00+00:00",
              "prev_hash": "0" * 64}
    legacy = LedgerEntry(**fields)
    assert "relation" not in legacy.body() and legacy.is_legacy and legacy.reproducible_noise
    modern = LedgerEntry(**{**fields, "accountant": "pld"}, relation="replace-one",
                         noise=SECRET_NOISE)
    assert modern.body()["noise"] == SECRET_NOISE and not modern.reproducible_noise
    forged = LedgerEntry(**{**fields, "accountant": "pld"}, relation="replace-one",
                         noise=SEEDED_NOISE)
    assert forged.computed_hash() != modern.computed_hash()  # the stamp cannot be swapped
    assert LedgerEntry.from_json(legacy.to_json().replace(',"noise":""', "")) == legacy


def test_a_deployed_node_ignores_a_partition_id_for_the_switches(tmp_path):
    """Only a node with no data folder of its own is simulated: a hospital that happens to
    carry a `partition-id` in its node config still refuses reproducible noise."""
    from client.node_settings import node_settings
    from common.run_config import RunConfig

    config = RunConfig.from_mapping(SEEDED)
    hospital = node_settings({"data-dir": str(tmp_path), "state-dir": str(tmp_path),
                              "partition-id": 1, "num-partitions": 4}, 3, config, None)
    assert not hospital.simulated
    simulated = node_settings({"partition-id": 1, "num-partitions": 4}, 3, config, "/sim")
    assert simulated.simulated
