"""The fine-tuned model's predictions on everything compression may train on, computed once.

Pruning recovery and the student's distillation both learn from the fp32 fine-tuned model
(the teacher): its logits on the labeled set and on the public transfer texts. The teacher is
the slow part (a 22M-parameter encoder), so its logits are computed once and shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from server.compression.distillation import teacher_logits
from server.compression.server_data import ServerData


@dataclass(frozen=True)
class TeacherTargets:
    """The server's training data and the teacher's logits on it."""

    data: ServerData
    labeled_logits: torch.Tensor  # [labeled, C]
    transfer_logits: torch.Tensor | None  # [transfer, C]; None without public texts

    def pool(self) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Labeled and transfer inputs as one set, with the teacher's predicted class of
        each (a label-free target: public texts have no labels)."""
        ids, mask = self.data.labeled_inputs
        logits = self.labeled_logits
        if self.data.transfer_inputs is not None and self.transfer_logits is not None:
            ids = torch.cat([ids, self.data.transfer_inputs[0]])
            mask = torch.cat([mask, self.data.transfer_inputs[1]])
            logits = torch.cat([logits, self.transfer_logits])
        return (ids, mask), logits.argmax(dim=1)


def teacher_targets(teacher: nn.Module, data: ServerData,
                    on_batch: Callable[[int, int], None] | None = None) -> TeacherTargets:
    """The teacher's logits on the labeled set and the transfer texts (eval mode, no grad)."""
    labeled = teacher_logits(teacher, data.labeled_inputs)
    transfer = (teacher_logits(teacher, data.transfer_inputs, on_batch=on_batch)
                if data.transfer_inputs is not None else None)
    return TeacherTargets(data=data, labeled_logits=labeled, transfer_logits=transfer)
