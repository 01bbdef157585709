"""A public pretrained encoder, frozen, with small trainable low-rank adapters (LoRA).

DP-SGD adds noise to every trained coordinate; training 10^4–10^5 adapter coordinates instead
of the encoder's 10^7 puts far less noise on the signal, and only the adapters travel. The
adapters are Hugging Face `peft` LoRA layers on the encoder's attention and feed-forward
Linear layers: their A and B matrices are ordinary `nn.Linear` modules, so Opacus computes
exact per-sample gradients for them (tests/test_public_encoder.py checks against brute force),
and the frozen base weights get neither per-sample gradients nor noise.

FFA-LoRA (`adapter=ffa-lora`) also freezes A at its shared, seeded initialisation and trains B
only: the update is then linear in B, so the average of the clients' updates is the update of
the average, and half as many coordinates are noised and uploaded.

`PublicMaskedLm` is the masked-language-model objective for such an encoder: the checkpoints
fedssl uses ship without an MLM head, so a small trainable transform maps the encoder's states
onto the *frozen* input embeddings, which act as the decoder (tied weights, nothing to learn
over the 30k-token vocabulary).
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from common.data.tokenizer import SpecialIds, tokenizer_sha256
from common.public_checkpoints import PublicCheckpoint, load_encoder, resolve_checkpoint

if TYPE_CHECKING:
    from common.run_config import RunConfig

# BERT's Linear layers: attention (query, key, value, attention.output.dense) and feed-forward
# (intermediate.dense, output.dense); "dense" matches all three dense layers of a block.
LORA_TARGETS = ("query", "key", "value", "dense")
ADAPTERS = ("lora", "ffa-lora")


def add_adapters(encoder: nn.Module, rank: int, alpha: float, adapter: str,
                 seed: int = 0) -> nn.Module:
    """Freeze `encoder` and add LoRA adapters of `rank` to its Linear layers (in place).

    A is drawn from a generator seeded with `seed`, so every party builds the same A (FFA-LoRA
    never sends it); B starts at zero, so the adapted encoder starts equal to the public one.
    """
    # Imported here: peft costs ~1.3 s per process, and runs without `init` never use it.
    from peft import LoraConfig, inject_adapter_in_model

    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter '{adapter}'; known: {', '.join(ADAPTERS)}")
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=list(LORA_TARGETS))
    encoder = inject_adapter_in_model(config, encoder)
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in encoder.named_parameters():
        if "lora_A" in name:  # peft's own init (Kaiming-uniform, a = sqrt(5)), from `generator`
            bound = 1.0 / parameter.shape[1] ** 0.5
            with torch.no_grad():
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound
                                - bound)
        trainable = "lora_B" in name or ("lora_A" in name and adapter == "lora")
        parameter.requires_grad_(trainable)
    return encoder


@functools.lru_cache(maxsize=2)
def run_checkpoint(init: str) -> PublicCheckpoint:
    """The verified checkpoint `init` names (cached per process: verification hashes 90 MB)."""
    checkpoint = resolve_checkpoint(init)
    if checkpoint is None:
        raise ValueError("init=none names no checkpoint")
    return checkpoint


def adapted_encoder(config: RunConfig) -> nn.Module:
    """The run's public encoder, frozen, with the run's adapters."""
    encoder = load_encoder(run_checkpoint(config.init))
    return add_adapters(encoder, config.lora_rank, config.lora_alpha, config.adapter,
                        seed=config.seed)


def checkpoint_inputs_sha256(config: RunConfig) -> str:
    """One hash of the public inputs a checkpoint run shares: its weights and tokenizer."""
    checkpoint = run_checkpoint(config.init)
    joined = f"{checkpoint.weights_sha256}:{tokenizer_sha256(checkpoint.tokenizer_file)}"
    return hashlib.sha256(joined.encode()).hexdigest()


def merged_encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's weights with the adapters merged in (W + scaling·B·A), under the plain
    transformers keys: loads into a `BertModel` without peft. The encoder is left unchanged."""
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}
    for name, module in encoder.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            delta = module.get_delta_weight("default") if "default" in module.lora_A else 0
            state[f"{name}.weight"] = (base.weight + delta).detach().clone()
            if base.bias is not None:
                state[f"{name}.bias"] = base.bias.detach().clone()
    for key, value in encoder.state_dict().items():
        if "lora_" in key or ".base_layer." in key:
            continue
        state.setdefault(key, value.detach().clone())
    return state


class PublicMaskedLm(nn.Module):
    """Frozen public encoder + adapters + a small trainable transform, decoded against the
    frozen input embeddings; `forward` returns logits at the masked positions."""

    def __init__(self, encoder: nn.Module, special: SpecialIds) -> None:
        super().__init__()
        self.encoder = encoder
        self.special_ids = special
        hidden = int(encoder.config.hidden_size)
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                       nn.LayerNorm(hidden, eps=encoder.config.layer_norm_eps))

    @property
    def vocab_size(self) -> int:
        return int(self.encoder.config.vocab_size)

    @property
    def federated_keys(self) -> tuple[str, ...]:
        return trainable_names(self)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        """Logits `[B, K, V]` at `positions` `[B, K]`."""
        hidden = encode(self.encoder, input_ids, attention_mask)
        index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        states = self.transform(torch.gather(hidden, 1, index))
        # A functional product with the frozen embedding matrix: no module, no per-sample
        # gradient, no noise over the vocabulary.
        return F.linear(states, self.encoder.embeddings.word_embeddings.weight)


def encode(encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token states `[B, T, H]` with the explicit position and token-type ids Opacus needs."""
    batch, length = input_ids.shape
    return encoder(
        input_ids=input_ids, attention_mask=attention_mask,
        position_ids=torch.arange(length, device=input_ids.device).expand(batch, length)
        .contiguous(),
        token_type_ids=torch.zeros_like(input_ids),
    ).last_hidden_state


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the parameters that train: what a model over a frozen encoder federates."""
    return tuple(name for name, parameter in model.named_parameters() if parameter.requires_grad)
