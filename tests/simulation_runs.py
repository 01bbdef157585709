"""The test modules' shared helpers (the one place they import helpers from; fixtures live in
conftest.py): running `fedssl` in-process or as a command, running `fedssl simulate` and
proving it left no process behind, a user's text folder, ledger entries written the way
nodes and the server write them, one node's real ClientApp round, a tiny random BERT
checkpoint folder, and the two per-record proofs every adapter objective must pass."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import torch

from client.node_settings import NodeSettings
from common.privacy.accounting import ACCOUNTANT, epsilon_of
from common.privacy.ledger import POISSON_GAUSSIAN, SECRET_NOISE, LedgerEntry, PrivacyLedger
from common.privacy.ledger_integrity import RELATION_OF
from common.run_config import ModelShape, RunConfig

ROOT = Path(__file__).resolve().parent.parent
MARK = "FEDSSL_TEST_RUN"  # environment marker of the processes one test run started
FLOWER_PROCESS_NAMES = ("flower-superlink", "flower-superexec", "flwr-serverapp",
                        "flwr-simulation", "flwr-clientapp", "raylet", "gcs_server")
# A tiny model and few records: the whole pipeline in about a minute. Fine-tuning runs its 2
# epochs and no more (the default finetune-min-steps would stretch them to 50 epochs, about as
# long as the federated rounds themselves, and no test reads how well it learned).
TINY_RUN = {
    "max-records": 4000, "local-steps": 4, "batch-size": 32, "label-fraction": 0.05,
    "hidden-size": 32, "num-layers": 1, "intermediate-size": 64, "max-length": 32,
    "finetune-epochs": 2, "finetune-min-steps": 0, "prune-recover-epochs": 1,
}


# ------------------------------------------------------- `fedssl simulate` and its processes

# Every process this test session starts inherits this mark (Ray's daemons and Flower's
# detached processes too, which are not our descendants), so cleanup finds exactly ours and
# never touches Flower processes of another session running on the same machine.
SESSION_MARK = "FEDSSL_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)


def flower_processes() -> set[int]:
    """PIDs of the Flower/Ray processes started by this test session."""
    found = set()
    mark = os.environ[SESSION_MARK]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if not any(name in cmdline for name in FLOWER_PROCESS_NAMES):
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(SESSION_MARK) == mark:
                found.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def marked_processes(token: str) -> set[int]:
    """PIDs of every process whose environment carries `token` (see `marked_env`)."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == token:
                found.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def marked_env() -> tuple[dict[str, str], str]:
    """An environment whose every descendant process can be found again (Flower's detached
    ones and Ray's workers too: they inherit it), without touching anyone else's processes."""
    token = uuid.uuid4().hex
    return {**os.environ, MARK: token}, token


def simulate(
    run_dir: Path, settings: dict[str, Any], timeout: int = 900,
    extra_args: list[str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], set[int]]:
    """Run `fedssl simulate` to completion; kill (and return) anything it left running.

    Only processes this run started count (found by an environment marker): other Flower
    runs on the same machine are neither reported nor killed.
    """
    env, token = marked_env()
    args = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    args += extra_args or []
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(run_dir), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False, env=env,
    )
    leftovers = marked_processes(token)
    for pid in leftovers:  # never leave processes behind, even when an assertion fails
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return result, leftovers


# ---------------------------------------------------------------------------- the fedssl command

def fedssl_in_process(*args: str) -> tuple[int, str, str]:
    """`fedssl ARGS` in this process: (exit code, stdout, stderr).

    For commands that start no process (bad settings, bad data, audits): the same code path
    as the console command (`sys.exit(main())`) without paying its imports again. Should one
    get as far as starting a simulation, it fails at once instead (in the test's own process
    it could not be stopped by PID). The command's Ctrl-C/SIGTERM handlers are put back.
    """
    from simulations import flower_launcher
    from simulations.cli import main

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError(f"`fedssl {' '.join(args)}` started a simulation in-process")

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                mock.patch.object(flower_launcher, "simulation_superlink", refuse):
            code = main(list(args))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, out.getvalue(), err.getvalue()


def fedssl_command(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """`python -m simulations.cli ARGS` as its own process (the console command's path)."""
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          check=False)


# ------------------------------------------------------------------------ a user's data folder

TOPICS = {"cardio": "heart artery chest", "neuro": "brain nerve seizure",
          "resp": "lung cough asthma"}


def write_text_folder(folder: Path, records: int = 240, sites: int = 4,
                      unlabelled_txt: int = 0) -> Path:
    """A .jsonl file (every other record labelled, all with a client) and an optional .txt."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(TOPICS)
    with open(folder / "notes.jsonl", "w") as handle:
        for i in range(records):
            label = names[i % 3]
            record = {"text": f"patient {i} reports {TOPICS[label]}", "client": f"site-{i % sites}"}
            if i % 2 == 0:
                record["label"] = label
            handle.write(json.dumps(record) + "\n")
    if unlabelled_txt:
        (folder / "more.txt").write_text("".join(f"follow-up visit {i}\n"
                                                 for i in range(unlabelled_txt)))
    return folder


# ---------------------------------------------------------------------------- ledger entries

DELTA = 1e-5
SIGMA, RATE, STEPS = 1.1, 64 / 5000, 20  # expected batch 64 of 5,000 records, 20 steps/round
FED_Z, FED_Q = 1.0, 0.1  # client-level: z = 1, 10 of 100 clients expected per round
Tweak = Callable[[str, int, dict[str, Any]], None]


def ledger_event(rnd: int, node: str, guarantee: str, sigma: float, rate: float, steps: int,
                 budget: float, run_id: str = "run-1") -> dict[str, Any]:
    """The fields of one privacy-consuming event, as a node (or the server) records it."""
    return {"run_id": run_id, "round": rnd, "node_id": node, "guarantee": guarantee,
            "mechanism": POISSON_GAUSSIAN, "noise_multiplier": sigma, "sample_rate": rate,
            "steps": steps, "delta": DELTA, "accountant": ACCOUNTANT, "max_epsilon": budget,
            "relation": RELATION_OF[guarantee], "noise": SECRET_NOISE}


def append_spend(ledger: PrivacyLedger, history: list[tuple[float, float, int]],
                 fields: dict[str, Any], tweak: Tweak | None = None) -> LedgerEntry:
    """Append one event as a writer does: claimed ε = epsilon_of(history incl. this event)
    under the entry's relation (record-level: replace-one; client-level: add/remove).
    `tweak(node_id, round, fields)` may change the fields first (to forge an entry)."""
    history.append((fields["noise_multiplier"], fields["sample_rate"], fields["steps"]))
    fields = {**fields, "epsilon": epsilon_of(history, fields["delta"], fields["relation"])}
    if tweak:
        tweak(fields["node_id"], fields["round"], fields)
    return ledger.append(**fields)


# A simulated node's real ClientApp round, as a digest (worker cache, secret noise).
SETTINGS = {"max-records": 2000, "num-clients": 4, "local-steps": 3, "batch-size": 8,
            "hidden-size": 32, "num-layers": 1, "intermediate-size": 64, "max-length": 32,
            "noise-multiplier": "auto", "target-epsilon": 4.0, "reproducible-noise": True}


def serve(partition_id: int, state_dir: Path, node_id: int,
          settings: dict | None = None) -> dict:
    """Run the real ClientApp `train` for one simulated node's round 1; a digest of its reply."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import client.app as client_app
    from common.run_config import RunConfig
    from common.tasks import get_task

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    config = RunConfig.from_mapping(settings or SETTINGS)
    task = get_task(config.task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        arrays = ArrayRecord(task.build_model(config).state_dict())
    context = Context(run_id=5, node_id=node_id, state=RecordDict(),
                      node_config={"partition-id": partition_id, "num-partitions": 4},
                      run_config=config.to_mapping())
    instruction = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({
        "server-round": 1, "sim-state-dir": str(state_dir),
        "public-inputs-sha256": task.public_inputs_sha256(config)})}),
        dst_node_id=node_id, message_type="train")
    reply = client_app.train(instruction, context)
    info = reply.content["fedssl"]
    ledger = [{k: v for k, v in json.loads(e).items() if k not in ("timestamp", "hash", "prev_hash")}
              for e in info["ledger"]]
    update = reply.content["arrays"].to_torch_state_dict()
    return {
        "status": info["status"],
        "update": {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in update.items()},
        "metrics": dict(reply.content["metrics"]),
        "ledger": ledger,
        "rng_after": torch.rand(4).tolist(),
    }


# A tiny BERT shape for fast tests (`from simulation_runs import TINY`).
TINY = ModelShape(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=32)

# One node's round settings for the client-round tests (tiny model, fixed σ).
CONFIG = RunConfig(
    hidden_size=TINY.hidden_size, num_layers=TINY.num_layers, num_heads=TINY.num_heads,
    intermediate_size=TINY.intermediate_size, max_length=TINY.max_length,
    batch_size=8, local_steps=3, noise_multiplier="1.1", num_rounds=3,
)


def hospital_node(tmp_path: Path, max_epsilon: float = 0.0, delta: float = DELTA) -> NodeSettings:
    """One deployed node's settings, its state in `tmp_path`/state."""
    return NodeSettings(node_id="hospital-a", state_dir=tmp_path / "state",
                        max_epsilon=max_epsilon, delta=delta, partition_id=None)


# ------------------------------------ a tiny public checkpoint and the per-record DP proofs
# (tests never need the 83 MB package; transformers is imported only by the tests using them)

WORDS = ["the", "patient", "has", "a", "fracture", "of", "left", "arm", "##s"]


def tiny_bert_folder(folder: Path, specials: tuple[str, ...] = (
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), model_type: str = "bert") -> Path:
    """A random 2-layer BERT saved the way Hugging Face saves a checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel

    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    if model_type != "bert":
        meta = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**meta, "model_type": model_type}))
    return folder


def adapted_tiny_encoder(folder: Path, adapter: str = "lora") -> torch.nn.Module:
    """The tiny checkpoint with rank-2 adapters, B made non-zero (at init B = 0 gives A no
    gradient to check) and dropout off (batched and one-at-a-time passes then agree exactly)."""
    from transformers import BertModel

    from common.tasks.public_encoder import add_adapters

    encoder = add_adapters(BertModel.from_pretrained(str(folder), add_pooling_layer=False),
                           rank=2, alpha=4, adapter=adapter, seed=1)
    torch.manual_seed(1)
    for name, parameter in encoder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return encoder


Loss = Callable[[torch.nn.Module, list[int]], torch.Tensor]  # (model, rows) -> mean loss


def assert_per_sample_gradients_equal_brute_force(model: torch.nn.Module, loss: Loss,
                                                  batch: int) -> None:
    """Opacus hooks' per-sample gradients of every trainable parameter equal one-record
    backward passes, and the frozen parameters get none."""
    from opacus import GradSampleModule

    reference = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        loss(gsm, list(range(batch))).backward()
    assert all(getattr(p, "grad_sample", None) is None
               for p in gsm.parameters() if not p.requires_grad)
    per_sample = {n: p.grad_sample.detach().clone()
                  for n, p in gsm.named_parameters() if p.requires_grad}
    reference_params = [p for p in reference.parameters() if p.requires_grad]
    for row in range(batch):
        reference.zero_grad(set_to_none=True)
        loss(reference, [row]).backward()
        for (name, got), expected in zip(per_sample.items(), reference_params, strict=True):
            torch.testing.assert_close(got[row], expected.grad, rtol=1e-6, atol=1e-9, msg=name)


def assert_one_record_moves_the_clipped_sum_by_its_own_share(
        model: torch.nn.Module, loss: Loss, batch: int, clip: float) -> None:
    """Removing any one record changes the clipped gradient sum by exactly that record's own
    clipped gradient: its norm is at most `clip` (and attains it when every record clips)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD([p for p in gsm.parameters() if p.requires_grad],
                                            lr=0.0),
                            noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=batch)

    def clipped_sum(rows: list[int]) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss(gsm, rows).backward()
        optimizer.clip_and_accumulate()
        return torch.cat([p.summed_grad.flatten() for p in optimizer.params])

    everyone = list(range(batch))
    full = clipped_sum(everyone)
    for removed in everyone:
        change = full - clipped_sum([r for r in everyone if r != removed])
        torch.testing.assert_close(change, clipped_sum([removed]), rtol=1e-6, atol=1e-10)
        assert 0.99 * clip < change.norm() <= clip * (1 + 1e-6)
