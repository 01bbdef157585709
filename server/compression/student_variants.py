"""A small student classifier, with the teacher (distilled) and without it (labels only).

The student is the run's small from-config BERT shape (`num-layers`, `hidden-size`, ...) on
the teacher's tokenizer, so both read the same token ids. With the teacher it learns from the
fp32 fine-tuned model's logits on the labeled set and the public transfer texts, plus the true
labels (server/compression/distillation.py); without it, the same student is fine-tuned on
the labels alone with the run's own recipe: the difference is what the teacher adds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import BertConfig

from common.data.tokenizer import load_tokenizer, special_ids
from common.run_layout import COMPRESSED_DIR
from common.tasks.mlm import bert_config
from server.compression.compress_progress import throttled
from server.compression.compression_settings import CompressionSettings
from server.compression.distillation import DistillRecipe, distill
from server.compression.finished_run import FinishedRun
from server.compression.onnx_export import onnx_int8_file
from server.compression.teacher_targets import TeacherTargets
from server.compression.variants import VariantSpec, parameter_count
from server.evaluation.arms import finetune_recipe
from server.evaluation.classifier_training import FinetuneRecipe, train_classifier
from server.evaluation.safetensors_export import save_state
from server.evaluation.text_classifier import MeanPoolClassifier, build_classifier

STUDENT_DIR = Path(COMPRESSED_DIR) / "student"  # its config.json: both students share it
Say = Callable[[str], None]


def student_config(run: FinishedRun) -> BertConfig:
    """The run's small shape, sized to the teacher's vocabulary and classes."""
    tokenizer = load_tokenizer(str(run.tokenizer_file))
    return bert_config(run.config.model_shape, tokenizer.get_vocab_size(), run.num_classes,
                       pad_token_id=special_ids(tokenizer).pad)


def distill_recipe(run: FinishedRun, settings: CompressionSettings) -> DistillRecipe:
    """The run's fine-tuning learning rate; a larger batch (the transfer set is large)."""
    return DistillRecipe(FinetuneRecipe(epochs=settings.distill_epochs, batch_size=64,
                                        learning_rate=run.config.finetune_learning_rate,
                                        seed=run.config.seed,
                                        min_steps=run.config.finetune_min_steps))


def student_specs(run: FinishedRun, targets: TeacherTargets, settings: CompressionSettings,
                  say: Say) -> list[VariantSpec]:
    """Train, save and export the distilled student; train and save the labels-only one."""
    if settings.distill_epochs == 0:
        return []
    config = student_config(run)
    config.save_pretrained(run.run_dir / STUDENT_DIR)
    transfer = 0 if targets.data.transfer_inputs is None else len(targets.data.transfer_inputs[0])
    say(f"[fedssl] compress: distilling a {config.num_hidden_layers}-layer student (hidden "
        f"{config.hidden_size}) from the fine-tuned model on {len(targets.data.labeled_labels)}"
        f" labeled + {transfer:,} public texts, {settings.distill_epochs} epochs")
    student = _fresh(config, run.config.seed)
    distill(student, (targets.data.labeled_inputs, targets.data.labeled_labels),
            targets.labeled_logits, targets.data.transfer_inputs, targets.transfer_logits,
            distill_recipe(run, settings), on_step=throttled("student", say, "steps"))
    params = parameter_count(student)
    shape = f"{config.num_hidden_layers} layers, hidden {config.hidden_size}"
    weights = STUDENT_DIR / "student.safetensors"
    save_state(student, run.run_dir / weights)
    onnx = onnx_int8_file(student, run.test_inputs, run.run_dir / COMPRESSED_DIR / "student-int8.onnx")
    say("[fedssl] compress: the same student on the labels alone (no teacher)")
    alone = _fresh(config, run.config.seed)
    train_classifier(alone, run.labeled_inputs, run.labeled_labels, finetune_recipe(run.config),
                     on_step=throttled("labels-only student", say, "steps"))
    alone_weights = STUDENT_DIR / "student-labels-only.safetensors"
    save_state(alone, run.run_dir / alone_weights)
    return [
        VariantSpec("student", f"student ({shape}), distilled, PyTorch fp32", "torch",
                    str(weights), params, config=str(STUDENT_DIR)),
        VariantSpec("student-onnx-int8", f"student ({shape}), distilled, ONNX Runtime int8",
                    "onnx", str(onnx.relative_to(run.run_dir)), params),
        VariantSpec("student-labels-only", f"student ({shape}), labels only (no teacher), "
                    "PyTorch fp32", "torch", str(alone_weights), params, config=str(STUDENT_DIR)),
    ]


def _fresh(config: BertConfig, seed: int) -> MeanPoolClassifier:
    return build_classifier(config, None, seed=seed)
