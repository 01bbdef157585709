"""A public corpus of the user's own domain (`public-corpus`, issue 18 §7): validated at the
edge, read by the warm start and the contrastive negatives, and part of the public inputs that
a node compares with the server's before it trains."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from simulation_runs import tiny_bert_folder

from client.node_setup import check_public_inputs
from common.config_error import ConfigError
from common.data.public_corpus import SHIPPED_NAME, load_public_corpus
from common.data.tokenizer import SHIPPED_TOKENIZER, tokenizer_sha256
from common.run_config import RunConfig
from common.run_layout import WARM_START_FILE
from common.tasks import get_task
from common.tasks.contrastive import NEGATIVES, public_negatives
from server.public_warm_start import warm_start

WARM = {"warm-start-steps": 2, "warm-start-batch-size": 8, "hidden-size": 32, "num-layers": 1,
        "intermediate-size": 64, "max-length": 16}


def _lines(path: Path, count: int, word: str = "guideline") -> Path:
    path.write_text("".join(f"{word} {i} of the public text\n\n" for i in range(count)))
    return path


def test_a_named_corpus_is_checked_at_the_edge(tmp_path: Path):
    txt = _lines(tmp_path / "public.txt", 10)
    (tmp_path / "public.jsonl").write_text('{"text": "a"}\n')
    assert RunConfig.from_mapping({**WARM, "public-corpus": str(txt)}).public_corpus == str(txt)
    assert RunConfig.from_mapping({**WARM, "public-corpus": str(tmp_path)}).warm_start_steps == 2
    refusals = {
        "missing": ({**WARM, "public-corpus": str(tmp_path / "nope.txt")}, "not found"),
        "jsonl file": ({**WARM, "public-corpus": str(tmp_path / "public.jsonl")},
                       "a single file must be a .txt file"),
        "no warm start": ({"public-corpus": str(txt)}, "reads no public text in this run"),
        "image task": ({"task": "mae", "public-corpus": str(txt)}, "task 'mae' reads no public"),
    }
    for name, (values, message) in refusals.items():
        with pytest.raises(ConfigError, match=message) as caught:
            RunConfig.from_mapping(values)
        assert caught.value.key == "public-corpus", name


def test_files_and_folders_are_read_by_the_data_folder_rules(tmp_path: Path):
    text = tmp_path / "one.txt"
    text.write_bytes("\ufeffFirst public text\n\n  second one  \n".encode())
    corpus = load_public_corpus(str(text))
    assert corpus.texts == ("First public text", "second one")
    assert corpus.sha256 == hashlib.sha256(b"First public text\nsecond one").hexdigest()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.csv").write_text('text,source\n"a guideline, quoted",x\n')
    (folder / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    assert load_public_corpus(str(folder)).texts == ("a guideline, quoted", "from jsonl")
    # A changed file is read again (the cache keys on sizes and modification times).
    text.write_text("replaced\n")
    os.utime(text, ns=(1, 1))
    assert load_public_corpus(str(text)).texts == ("replaced",)
    for name, content, message in (("blank.txt", b"\n \n", "holds no text"),
                                   ("latin1.txt", "caf\xe9\n".encode("latin-1"), "UTF-8")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=message):
            load_public_corpus(str(tmp_path / name))
    (folder / "notes.docx").write_bytes(b"x")
    with pytest.raises(ConfigError, match="'public-corpus': .*folder: notes.docx: unsupported"):
        load_public_corpus(str(folder))
    shipped = load_public_corpus("")
    assert shipped.name == SHIPPED_NAME and len(shipped.texts) > 20_000


def test_the_warm_start_trains_on_the_named_corpus_and_records_it(tmp_path: Path):
    corpus = _lines(tmp_path / "public.txt", 40)
    config = RunConfig.from_mapping({**WARM, "public-corpus": str(corpus)})
    task = get_task("mlm")
    torch.manual_seed(0)
    record = warm_start(config, task, task.build_model(config), tmp_path, say=lambda _: None)
    assert record["records"] == 40 and record["corpus"] == str(corpus.resolve())
    assert record["corpus_sha256"] == load_public_corpus(str(corpus)).sha256
    on_disk = json.loads((tmp_path / WARM_START_FILE).read_text())
    assert on_disk["corpus_sha256"] == record["corpus_sha256"]
    default = RunConfig.from_mapping(WARM)
    assert record["corpus_sha256"] != load_public_corpus(default.public_corpus).sha256


def test_a_node_refuses_a_run_whose_public_corpus_differs_from_its_own(tmp_path: Path):
    task = get_task("mlm")
    ours = RunConfig.from_mapping({**WARM, "public-corpus": str(_lines(tmp_path / "a.txt", 5))})
    server_hash = task.public_inputs_sha256(ours)
    # Without a named corpus the hash is what it always was (the vocabulary's).
    assert task.public_inputs_sha256(RunConfig.from_mapping(WARM)) == tokenizer_sha256(
        SHIPPED_TOKENIZER)
    assert server_hash != tokenizer_sha256(SHIPPED_TOKENIZER)
    check_public_inputs(task, ours, server_hash)  # the same corpus: accepted
    other = _lines(tmp_path / "b.txt", 5, word="textbook")
    theirs = RunConfig.from_mapping({**WARM, "public-corpus": str(other)})
    with pytest.raises(ConfigError, match="differ from the server's.*public-corpus"):
        check_public_inputs(task, theirs, server_hash)


@pytest.fixture()
def bert(tmp_path: Path) -> Path:
    return tiny_bert_folder(tmp_path / "bert")


def test_contrastive_negatives_come_from_the_named_corpus(tmp_path: Path, bert: Path):
    corpus = _lines(tmp_path / "public.txt", NEGATIVES + 20)
    config = RunConfig.from_mapping({"task": "contrastive", "init": str(bert),
                                     "public-corpus": str(corpus), "max-length": 12})
    picked = public_negatives(config)
    assert len(set(picked)) == NEGATIVES
    assert set(picked) <= set(load_public_corpus(str(corpus)).texts)
    task = get_task("contrastive")
    before = task.public_inputs_sha256(config)
    # One changed text changes the hash even where the seeded pick does not look.
    unpicked = min(set(load_public_corpus(str(corpus)).texts) - set(picked))
    corpus.write_text(corpus.read_text().replace(unpicked + "\n", "edited\n"))
    os.utime(corpus, ns=(2, 2))
    assert public_negatives(config) == picked and task.public_inputs_sha256(config) != before
    small = RunConfig.from_mapping({"task": "contrastive", "init": str(bert), "public-corpus":
                                    str(_lines(tmp_path / "small.txt", NEGATIVES - 1))})
    with pytest.raises(ConfigError, match=f"holds {NEGATIVES - 1} texts.*at least {NEGATIVES}"):
        task.build_model(small)


def test_an_unreadable_corpus_fails_before_the_run_starts(tmp_path: Path):
    """`fedssl simulate` runs check_run_data first: a corpus that exists but holds nothing
    usable is refused there, not minutes later inside the warm start."""
    from common.tasks import check_run_data

    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    config = RunConfig.from_mapping({**WARM, "max-records": 2000, "public-corpus": str(blank)})
    with pytest.raises(ConfigError, match="holds no text") as caught:
        check_run_data(config)
    assert caught.value.key == "public-corpus"
