"""The one typed run configuration, parsed and validated once at the edge.

Flower delivers `[tool.flwr.app.config]` (plus `--run-config` overrides) as a flat mapping with
hyphenated keys; `RunConfig.from_mapping` turns it into this object or raises `ConfigError`
naming the offending setting. Defaults here must equal pyproject.toml's (a test checks).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.config_error import ConfigError
from common.data.deidentification import DEID_ENGINES, DEID_OFF
from common.data.public_corpus import corpus_problem
from common.secure_aggregation_rules import require_secure_aggregation
from common.tasks import get_task

AUTO = "auto"
MAX_TARGET_EPSILON = 100.0
MAX_NOISE_MULTIPLIER = 1e4  # calibration's own ceiling (common/privacy/accounting.py)
MIN_DIRICHLET_ALPHA = 1e-3
# Far above anything this product runs, far below what overflows or exhausts a machine.
SIZE_LIMITS = {
    "num-clients": 100_000, "num-rounds": 100_000, "local-steps": 1_000_000,
    "batch-size": 1_000_000, "hidden-size": 8192, "num-layers": 128, "num-heads": 256,
    "intermediate-size": 65_536, "max-length": 4096, "finetune-epochs": 100_000,
    "finetune-batch-size": 1_000_000, "finetune-min-steps": 10_000_000,
    "warm-start-steps": 10_000_000, "warm-start-batch-size": 1_000_000,
    "max-records": 100_000_000, "round-retries": 100, "prune-recover-epochs": 10_000,
}
CLIENT_SAMPLING = ("fixed", "poisson")
AGGREGATORS = ("mean", "median", "trimmed-mean")
PARTITIONS = ("dirichlet", "iid", "column")  # how simulated clients split the unlabeled pool
SHORT_ROUND = ("skip", "retry")


@dataclass(frozen=True)
class ModelShape:
    """Size of the BERT encoder (shared by pretraining, fine-tuning and the baseline)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    max_length: int = 48


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a fedssl run. Field `x_y` is run-config key `x-y`."""

    task: str = "mlm"
    run_dir: str = "runs/latest"
    seed: int = 0
    # Federation
    num_clients: int = 5
    num_rounds: int = 3
    fraction_train: float = 1.0
    min_clients: int = 1  # fewer usable updates than this: the round is skipped
    round_timeout: float = 3600.0  # seconds to wait for replies; late ones are dropouts
    short_round: str = "skip"  # too few usable updates: "skip" at once, or "retry" first
    round_retries: int = 1  # short-round=retry: re-runs (fresh sample) before a skip
    aggregator: str = "mean"  # "mean" (FedAvg), or robust: "median", "trimmed-mean"
    trim_fraction: float = 0.2  # trimmed-mean: share cut from each end, per coordinate
    # Local DP-SGD (record-level DP)
    local_steps: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    clip_norm: float = 1.0
    noise_multiplier: str = AUTO
    target_epsilon: float = 8.0
    delta: float = 1e-5
    # Simulation switches that weaken what a node releases; off by default, refused by
    # deployed nodes. reproducible-noise draws DP noise and Poisson masks from the run seed
    # (bit-for-bit repeatable runs, and NO DP guarantee: the ledger, summary, report and audit
    # say so); release-train-loss puts each node's raw training loss (outside DP) in replies.
    reproducible_noise: bool = False
    release_train_loss: bool = False
    # Public warm start: non-private SSL steps on the task's public corpus, on the server,
    # before round 1 (server/public_warm_start.py); 0 = off
    warm_start_steps: int = 0
    # Its batch, independent of the clients' DP batch (so a sweep arm that changes the DP
    # batch does not also change how much public text the warm start reads).
    warm_start_batch_size: int = 128
    # Public text for the warm start and the contrastive task's negatives: "" = the shipped
    # ICD-10-CM headings; or a .txt file (one text per line) or a folder of text files of the
    # user's own domain, public by declaration (common/data/public_corpus.py). Its hash enters
    # the public-inputs hash, so every node must hold the same corpus.
    public_corpus: str = ""
    # Clients' DP-SGD leaves the task's vocabulary matrices as the server sent them (text:
    # word embeddings and MLM decoder, 78% of the default model): the noise is spread over
    # fewer coordinates. Meant after a public warm start, which trains those matrices.
    freeze_embeddings: bool = False
    # Client update clipping (bounds each client's influence on the aggregate)
    update_clip_norm: float = 5.0
    # Client budgets: a cap every node applies on top of its own node-config max-epsilon
    # (it can lower a node's budget, never raise it); 0 = no cap. Simulated nodes have no
    # node config, so this is how a simulation gives them a budget.
    client_max_epsilon: float = 0.0
    sim_state_dir: str = ""  # simulation: simulated nodes' durable state; "" = RUN_DIR/nodes
    # Simulation: the de-identification pass simulated nodes apply to their text records
    # ("off", "presidio", "philter"); a deployed node decides with its own node config `deid`.
    sim_deid: str = "off"
    # Client-level DP (DP-FedAvg): noise z*S on the aggregate of updates clipped to S
    client_dp: bool = False
    client_noise_multiplier: float = 1.0
    client_sampling: str = "fixed"  # "fixed" (fraction-train, no amplification) or "poisson"
    # Secure aggregation (Flower's SecAgg+): the server learns only the sum of a round's
    # updates (server/secure_aggregation.py); secagg-threshold: the share of the round's
    # sample whose key shares unmask the sum (fewer live nodes: the round is skipped)
    secure_aggregation: bool = False
    secagg_threshold: float = 0.67
    # With client-dp: "server" adds the client-level noise to the aggregate; "distributed"
    # (needs secure-aggregation): every node adds its share, so the server sees a noisy sum
    client_noise: str = "server"
    # Data
    data: str = ""  # simulation: "" = the embedded demo data; or a folder of the user's own
    partition: str = "dirichlet"  # "dirichlet" (over labels), "iid", "column" (`client` field)
    label_fraction: float = 0.01
    test_fraction: float = 0.2
    dirichlet_alpha: float = 0.5
    max_records: int = 0
    # Text records longer than the loaders' limit (20,000 characters): false = refuse the
    # folder naming every one; true = cut them to the limit (and train on what max-length keeps).
    truncate_records: bool = False
    tokenizer: str = ""
    # Model. init: "none" = a from-config BERT of the shape below with the shipped vocabulary;
    # "minilm" = the public all-MiniLM-L6-v2 checkpoint; or a local Hugging Face BERT folder.
    # With a checkpoint, its encoder stays frozen and clients train small adapters
    # (common/tasks/public_encoder.py); the shape settings are then the checkpoint's.
    init: str = "none"
    adapter: str = "lora"  # "lora", or "ffa-lora" (A frozen at its seeded init, B trained)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    max_length: int = 48
    # Central fine-tuning, baseline and pruning (downstream=false: pretraining only, e.g. for
    # `fedssl sweep`, which evaluates the pretrained model at many label budgets itself)
    downstream: bool = True
    finetune_epochs: int = 30
    finetune_batch_size: int = 32
    finetune_learning_rate: float = 5e-4
    finetune_min_steps: int = 300  # tiny labeled sets train for more epochs to get this many
    prune_amount: float = 0.5
    prune_recover_epochs: int = 2

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from hyphenated keys (unknown keys are an error), then validate."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known:
                raise ConfigError(key, f"unknown setting; known settings: {', '.join(known)}")
            field = known[key]
            kwargs[field.name] = _coerce(key, raw, field.type)
        config = cls(**kwargs)
        config.validate()
        return config

    def to_mapping(self) -> dict[str, Any]:
        """Hyphenated key → value, as in pyproject.toml."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some fields changed."""
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    @property
    def model_shape(self) -> ModelShape:
        return ModelShape(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_length=self.max_length,
        )

    @property
    def fixed_noise_multiplier(self) -> float | None:
        """The explicit noise multiplier, or None when it is calibrated to target-epsilon."""
        return None if self.noise_multiplier == AUTO else float(self.noise_multiplier)

    def validate(self) -> None:
        """Raise ConfigError for the first impossible setting."""
        task = get_task(self.task)
        _require("seed", 0 <= self.seed < 2**32, "must be an integer in [0, 2^32)")
        self._require_sizes()
        _require("num-rounds", self.num_rounds >= 0,
                 "must be >= 0 (0: no federated rounds, e.g. a warm-start-only control)")
        for key in ("num-clients", "local-steps", "batch-size", "hidden-size",
                    "num-layers", "num-heads", "intermediate-size", "finetune-epochs",
                    "finetune-batch-size"):
            _require(key, getattr(self, key.replace("-", "_")) >= 1, "must be >= 1")
        _require("warm-start-steps", self.warm_start_steps >= 0, "must be >= 0 (0 = off)")
        _require("warm-start-batch-size", self.warm_start_batch_size >= 1, "must be >= 1")
        _require("warm-start-steps", self.warm_start_steps == 0 or task.public_corpus,
                 f"task '{self.task}' has no public corpus for a warm start; use 0")
        _require("max-records", self.max_records >= 0, "must be >= 0 (0 means all records)")
        _require("truncate-records", not self.truncate_records or task.data_kind == "text",
                 f"task '{self.task}' reads images, which have no text records to truncate")
        _require("sim-deid", self.sim_deid in DEID_ENGINES,
                 f"must be one of {', '.join(DEID_ENGINES)}")
        _require("sim-deid", self.sim_deid == DEID_OFF or task.data_kind == "text",
                 f"task '{self.task}' reads images: de-identification applies to text records")
        _require("finetune-min-steps", self.finetune_min_steps >= 0, "must be >= 0")
        _require("prune-recover-epochs", self.prune_recover_epochs >= 0, "must be >= 0")
        _require("max-length", self.max_length >= 8, "must be >= 8 tokens")
        _require("hidden-size", self.hidden_size % self.num_heads == 0,
                 f"must be divisible by num-heads ({self.num_heads})")
        _require("fraction-train", 0 < self.fraction_train <= 1, "must be in (0, 1]")
        _require("freeze-embeddings", not self.freeze_embeddings or bool(task.vocabulary_parameters),
                 f"task '{self.task}' has no vocabulary matrices to freeze (only mlm has)")
        _require("learning-rate", 0 < self.learning_rate < math.inf, "must be a finite number > 0")
        _require("finetune-learning-rate", 0 < self.finetune_learning_rate < math.inf,
                 "must be a finite number > 0")
        _require("clip-norm", 0 < self.clip_norm < math.inf,
                 "must be a finite number > 0 (per-record gradient clip norm)")
        _require("update-clip-norm", 0 < self.update_clip_norm < math.inf,
                 "must be a finite number > 0")
        _require("delta", 0 < self.delta < 1, "must be in (0, 1)")
        _require("label-fraction", 0 < self.label_fraction <= 1, "must be in (0, 1]")
        _require("test-fraction", 0 < self.test_fraction < 1, "must be in (0, 1)")
        _require("dirichlet-alpha", MIN_DIRICHLET_ALPHA <= self.dirichlet_alpha < math.inf,
                 f"must be a finite number >= {MIN_DIRICHLET_ALPHA:g} (smaller gives every "
                 "record to one client)")
        _require("prune-amount", 0 <= self.prune_amount < 1, "must be in [0, 1)")
        _require("client-max-epsilon", 0 <= self.client_max_epsilon < math.inf,
                 "must be a finite number >= 0 (0 means no cap)")
        _require("client-noise-multiplier", 0 <= self.client_noise_multiplier < math.inf,
                 "must be a finite number >= 0")
        _require("min-clients", 1 <= self.min_clients <= self.num_clients,
                 f"must be between 1 and num-clients ({self.num_clients})")
        _require("round-timeout", 0 < self.round_timeout < math.inf, "must be > 0 seconds")
        _require("short-round", self.short_round in SHORT_ROUND,
                 f"must be one of {', '.join(SHORT_ROUND)}")
        _require("round-retries", self.round_retries >= 0, "must be >= 0")
        _require("short-round", not (self.client_dp and self.short_round == "retry"),
                 "client-level DP releases (and accounts) a noisy aggregate on every attempt; "
                 "re-running a round because few clients took part would reveal "
                 "participation: use short-round=skip with client-dp")
        _require("aggregator", self.aggregator in AGGREGATORS,
                 f"must be one of {', '.join(AGGREGATORS)}")
        _require("trim-fraction", 0 <= self.trim_fraction < 0.5, "must be in [0, 0.5)")
        _require("min-clients", not (self.client_dp and self.min_clients > 1),
                 "client-level DP releases every round (skipping rounds with few clients "
                 "would reveal participation): use min-clients=1 with client-dp")
        _require("aggregator", not (self.client_dp and self.aggregator != "mean"),
                 "client-level DP needs the plain sum of updates (aggregator=mean): a robust "
                 "aggregate has a different sensitivity")
        require_secure_aggregation(self)
        _require("client-sampling", self.client_sampling in CLIENT_SAMPLING,
                 f"must be one of {', '.join(CLIENT_SAMPLING)}")
        _require("partition", self.partition in PARTITIONS,
                 f"must be one of {', '.join(PARTITIONS)}")
        _require("partition", self.partition != "column" or bool(self.data),
                 "'column' splits by the `client` field of your own data: set data=PATH too")
        noise = self.fixed_noise_multiplier if self._noise_is_number() else None
        _require("noise-multiplier", self.noise_multiplier == AUTO or noise is not None,
                 f"must be '{AUTO}' or a number >= 0, got '{self.noise_multiplier}'")
        if noise is not None:
            _require("noise-multiplier", math.isfinite(noise) and noise >= 0, "must be >= 0")
        if self.noise_multiplier == AUTO:
            _require("target-epsilon", 0 < self.target_epsilon <= MAX_TARGET_EPSILON,
                     f"must be in (0, {MAX_TARGET_EPSILON:g}]: a larger ε guarantees nothing "
                     "(use noise-multiplier=0 for a run without noise)")
        if noise is not None:
            _require("noise-multiplier", noise <= MAX_NOISE_MULTIPLIER,
                     f"must be at most {MAX_NOISE_MULTIPLIER:g}")
        if self.tokenizer:
            _require("tokenizer", Path(self.tokenizer).is_file(),
                     f"file not found: {self.tokenizer}")
        self._require_init(task.needs_checkpoint)
        self._require_public_corpus(task.public_negatives,
                                    task.public_corpus and self.warm_start_steps > 0)

    def _require_init(self, needs_checkpoint: bool) -> None:
        """A public checkpoint brings its own tokenizer and shape, and trains adapters only."""
        public = self.init != "none"
        _require("init", public or not needs_checkpoint,
                 f"task '{self.task}' adapts a public encoder: set init=minilm or init=PATH")
        _require("init", not public or self.init == "minilm" or Path(self.init).is_dir(),
                 f"'{self.init}' is neither none, minilm, nor a folder")
        _require("adapter", self.adapter in ("lora", "ffa-lora"), "must be lora or ffa-lora")
        _require("lora-rank", 1 <= self.lora_rank <= 256, "must be in [1, 256]")
        _require("lora-alpha", 0 < self.lora_alpha < math.inf, "must be a finite number > 0")
        if public:
            _require("tokenizer", not self.tokenizer,
                     "a checkpoint brings its own tokenizer: leave tokenizer empty with init")
            _require("warm-start-steps", self.warm_start_steps == 0,
                     "a public checkpoint is the public start: use 0 with init")
            _require("freeze-embeddings", not self.freeze_embeddings,
                     "with init the whole encoder is frozen already (adapters train)")

    def _require_public_corpus(self, negatives: bool, warm_start: bool) -> None:
        """A named corpus must exist and be read by this run (else it would be ignored)."""
        if not self.public_corpus:
            return
        problem = corpus_problem(self.public_corpus)
        _require("public-corpus", problem is None, problem or "")
        _require("public-corpus", negatives or warm_start,
                 f"task '{self.task}' reads no public text in this run: the corpus feeds the "
                 "warm start (warm-start-steps > 0, task mlm without init) and the contrastive "
                 "task's negatives; leave public-corpus empty")

    def _require_sizes(self) -> None:
        """Upper bounds: values that validation used to let through and the run then died on
        (after minutes, without naming the setting) or silently wasted hours on."""
        for key, limit in SIZE_LIMITS.items():
            value = getattr(self, key.replace("-", "_"))
            _require(key, value <= limit, f"must be at most {limit:,} (got {value:,})")

    def _noise_is_number(self) -> bool:
        try:
            float(self.noise_multiplier)
        except ValueError:
            return False
        return True


def _require(key: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def _coerce(key: str, raw: Any, kind: Any) -> Any:
    """Convert a run-config value to the field's type, with a clear error."""
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "str":
            return str(raw)
        if kind == "bool":
            return _parse_bool(raw)
        if isinstance(raw, bool):
            raise TypeError
        if kind == "int":
            value = float(raw)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(raw)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected {kind}, got {raw!r}") from None
    raise AssertionError(f"unsupported field type {kind} for {key}")


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(raw)


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Parse `key=value` strings (from `--set`) into a mapping, with clear errors."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(pair, "expected key=value")
        values[key.strip()] = value.strip().strip("'\"")
    return values
