"""The evaluation stage says what it is doing: per arm, epoch/step, elapsed and ETA (issue 18 §7).

The clock is injected, so throttling and ETAs are checked exactly; one test runs the real
downstream stage in-process (tiny model, no Flower) and reads the lines it printed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from simulation_runs import TINY_RUN, tiny_bert_folder

from common.run_config import RunConfig
from common.tasks import get_task
from server.evaluation.classifier_training import FinetuneRecipe, train_classifier
from server.evaluation.evaluation_progress import ArmPlan, EvaluationProgress
from server.evaluation.pipeline import class_balance, run_downstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(plan: list[ArmPlan]) -> tuple[EvaluationProgress, Clock, list[str]]:
    clock, lines = Clock(), []
    return EvaluationProgress(plan, lines.append, clock=clock, min_gap_s=3, max_gap_s=30), \
        clock, lines


def test_a_line_per_tenth_but_never_more_often_than_the_minimum_gap():
    progress, clock, lines = _progress([ArmPlan("finetuned", "train", "fine-tune", 100, 10)])
    progress.start("finetuned")
    assert lines == ["[fedssl] evaluation arm 1/1 finetuned: fine-tune | evaluation elapsed 0s"]
    for step in range(1, 101):
        clock.now += 1.0  # 1 s per step: a tenth is 10 s, well above the 3 s minimum
        progress.step(step, 100)
    steps = [int(re.search(r"step (\d+)/100", line)[1]) for line in lines[1:]]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80, 90]  # the last step is the finish line's
    assert lines[5] == ("[fedssl] evaluation arm 1/1 finetuned | epoch 5/10, step 50/100 (50%) "
                        "| arm elapsed 50s, ETA 50s | evaluation elapsed 50s, ETA 50s")
    progress.finish(0.4216)
    assert lines[-1] == ("[fedssl] evaluation arm 1/1 finetuned done in 1m40s: macro-F1 0.422 "
                         "| evaluation elapsed 1m40s")

    fast, clock, quiet = _progress([ArmPlan("baseline", "train", "fine-tune", 100, 10)])
    fast.start("baseline")
    for step in range(1, 101):
        clock.now += 1 / 32  # about 3 s in all: only one line gets past the 3 s gap
        fast.step(step, 100)
    assert len(quiet) == 2 and "step 96/100" in quiet[1]


def test_a_slow_arm_is_never_silent_for_longer_than_the_maximum_gap():
    progress, clock, lines = _progress([ArmPlan("finetuned", "train", "fine-tune", 1000, 1)])
    progress.start("finetuned")
    for step in range(1, 41):
        clock.now += 10.0  # a tenth would take 1,000 s
        progress.step(step, 1000)
    assert [int(re.search(r"step (\d+)/", line)[1]) for line in lines[1:]] == [3, 6, 9, 12, 15,
                                                                             18, 21, 24, 27, 30,
                                                                             33, 36, 39]


def test_the_stage_eta_counts_every_arm_left_and_says_when_it_is_a_lower_bound():
    plan = [ArmPlan("finetuned", "train", "", 10, 1), ArmPlan("tfidf", "classical", ""),
            ArmPlan("probe", "probe", ""), ArmPlan("baseline", "train", "", 20, 2),
            ArmPlan("probe_random", "probe", "")]
    progress, clock, _ = _progress(plan)
    progress.start("finetuned")
    assert progress.stage_eta(0, 10) == (None, "")  # no step measured yet
    clock.now += 4.0
    # 2 s per step: 6 s left of this arm, 40 s of baseline; tfidf and the probes unmeasured.
    assert progress.arm_eta(2, 10) == pytest.approx(16.0)
    assert progress.stage_eta(2, 10) == (pytest.approx(16.0 + 40.0), "≥ ")
    clock.now += 16.0
    progress.finish(0.5)
    progress.start("tfidf")
    clock.now += 3.0
    progress.finish(0.4)
    progress.start("probe")
    clock.now += 7.0
    progress.finish(None)  # "not applicable" still counts its time
    progress.start("baseline")
    clock.now += 10.0  # 5 steps: (20 + 10) s / (10 + 5) steps = 2 s per step
    assert progress.stage_eta(5, 20) == (pytest.approx(15 * 2.0 + 7.0), "")
    with pytest.raises(ValueError, match="not next in the plan"):
        progress.start("finetuned")


def test_train_classifier_reports_every_optimizer_step():
    model = torch.nn.Linear(3, 2)
    model.num_labels = 2
    seen: list[tuple[int, int]] = []
    inputs = (torch.randn(10, 3),)
    recipe = FinetuneRecipe(epochs=3, batch_size=4, seed=0)  # 3 steps per epoch
    train_classifier(model, inputs, torch.tensor([0, 1] * 5), recipe,
                     on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 9) for k in range(1, 10)]


def test_class_balance_in_numbers():
    assert class_balance(np.array([0] * 90 + [1] * 10)) == {"largest_class_share": 0.9,
                                                            "class_count_ratio": 9.0}
    assert class_balance(np.array([0, 1, 2] * 5)) == {"largest_class_share": 0.3333,
                                                      "class_count_ratio": 1.0}


def test_the_real_downstream_stage_reports_each_arm(tmp_path: Path):
    config = RunConfig.from_mapping({**TINY_RUN, "max-records": 1500, "label-fraction": 0.1,
                                     "run-dir": str(tmp_path)})
    torch.manual_seed(0)
    model = get_task("mlm").build_model(config)
    lines: list[str] = []
    results = run_downstream(config, model, tmp_path, say=lines.append)
    keys = [key for key, _ in results["arms"]]
    assert keys == ["finetuned", "baseline", "tfidf", "probe", "probe_random", "pruned"]
    for number, key in enumerate(keys, start=1):
        prefix = f"[fedssl] evaluation arm {number}/{len(keys)} {key}"
        assert any(line.startswith(prefix + ": ") for line in lines), (key, lines)
        done = [line for line in lines if line.startswith(prefix + " done in ")]
        assert len(done) == 1 and f"macro-F1 {results[key]['macro_f1']:.3f}" in done[0]
    labels = results["labels"]
    epochs = TINY_RUN["finetune-epochs"]
    assert f"fine-tune on {labels['labels_used']} labels, {epochs} epochs" in lines[0]
    assert 0 < labels["largest_class_share"] < 1 and labels["class_count_ratio"] >= 1
    assert dict(results["arms"])["finetuned"] == "SSL pretrained (federated) + fine-tune"


def test_with_a_public_checkpoint_scratch_is_the_small_bert_and_public_arms_join(tmp_path: Path):
    from safetensors.torch import load_file

    folder = tiny_bert_folder(tmp_path / "public-bert")
    config = RunConfig.from_mapping({**TINY_RUN, "max-records": 1500, "label-fraction": 0.1,
                                     "run-dir": str(tmp_path), "init": str(folder),
                                     "hidden-size": 8, "num-heads": 2})
    model = get_task("mlm").build_model(config)
    results = run_downstream(config, model, tmp_path, say=lambda line: None)
    arms = dict(results["arms"])
    assert list(arms)[:2] == ["finetuned", "baseline"] and {"public", "public_probe"} <= set(arms)
    assert arms["baseline"] == "small BERT from scratch (1 layers, hidden 8)"
    shapes = {name: load_file(tmp_path / "models" / f"{name}.safetensors")[
        "bert.embeddings.word_embeddings.weight"].shape[1] for name in ("baseline", "public")}
    assert shapes == {"baseline": 8, "public": 16}  # tiny_bert_folder's width is 16
