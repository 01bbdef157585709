"""Public checkpoints: a local folder or the packaged MiniLM, verified before loading.

Tests build a tiny random BERT folder on the fly (no 83 MB package needed); one slow test checks
the packaged MiniLM itself when it is installed.
"""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from simulation_runs import tiny_bert_folder
from transformers import BertModel

from common.data.tokenizer import SpecialIds, TokenizerError, load_tokenizer, special_ids
from common.public_checkpoints import (
    MINILM_DISTRIBUTION,
    MINILM_SHA256,
    CheckpointError,
    checkpoint_folder,
    extract_verified,
    load_encoder,
    packaged_minilm,
    resolve_checkpoint,
    sha256_file,
)


def test_a_local_folder_loads_and_its_hash_is_recorded(tmp_path):
    folder = tiny_bert_folder(tmp_path / "bert")
    checkpoint = resolve_checkpoint(str(folder))
    assert checkpoint is not None and checkpoint.hidden_size == 16
    assert checkpoint.weights_sha256 == sha256_file(folder / "model.safetensors")
    encoder = load_encoder(checkpoint)
    reference = BertModel.from_pretrained(str(folder), add_pooling_layer=False)
    for (name, ours), (_, theirs) in zip(encoder.state_dict().items(),
                                         reference.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name
    assert special_ids(load_tokenizer(checkpoint.tokenizer_file)).mask == 4


def test_none_means_no_checkpoint():
    assert resolve_checkpoint("none") is None


@pytest.mark.parametrize("remove", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_folder_missing_a_file_is_refused_naming_it(tmp_path, remove):
    folder = tiny_bert_folder(tmp_path / "bert")
    (folder / remove).unlink()
    with pytest.raises(CheckpointError, match=remove):
        checkpoint_folder(folder)


def test_a_non_bert_model_and_a_missing_folder_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="model_type 'gpt2'"):
        checkpoint_folder(tiny_bert_folder(tmp_path / "gpt", model_type="gpt2"))
    with pytest.raises(CheckpointError, match="is not a folder"):
        resolve_checkpoint(str(tmp_path / "nowhere"))


def test_special_token_ids_are_read_not_assumed(tmp_path):
    """A checkpoint's special tokens are read from its tokenizer, as the text tasks read them."""
    stock = tiny_bert_folder(tmp_path / "stock", specials=(
        "[unused0]", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    assert special_ids(load_tokenizer(stock / "tokenizer.json")).mask == 5
    no_mask = tiny_bert_folder(tmp_path / "nomask", specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]"))
    with pytest.raises(TokenizerError, match=r"no \[MASK\]"):
        special_ids(load_tokenizer(no_mask / "tokenizer.json"))


def _zip_of(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as out:
        for path in folder.iterdir():
            out.write(path, path.name)
    return archive


def test_extraction_checks_the_weights_hash_before_publishing(tmp_path):
    folder = tiny_bert_folder(tmp_path / "bert")
    archive = _zip_of(folder, tmp_path / "model.zip")
    good = sha256_file(folder / "model.safetensors")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="not the upstream file"):
        extract_verified(archive, "0" * 64, cache)
    assert not any(cache.iterdir())  # nothing published, no staging left behind
    extracted = extract_verified(archive, good, cache)
    assert sha256_file(extracted / "model.safetensors") == good
    assert extract_verified(archive, good, cache) == extracted  # once


def test_a_changed_cached_copy_is_refused(tmp_path):
    folder = tiny_bert_folder(tmp_path / "bert")
    good = sha256_file(folder / "model.safetensors")
    extracted = extract_verified(_zip_of(folder, tmp_path / "m.zip"), good, tmp_path / "cache")
    with (extracted / "model.safetensors").open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="cached copy was changed"):
        checkpoint_folder(extracted, expected_sha256=good)


def test_an_archive_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("../outside.txt", "x")
    with pytest.raises(CheckpointError, match="escapes"):
        extract_verified(archive, "0" * 64, tmp_path / "cache")
    assert not (tmp_path / "outside.txt").exists()


def _minilm_installed() -> bool:
    try:
        metadata.distribution(MINILM_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _minilm_installed(), reason=f"{MINILM_DISTRIBUTION} not installed")
def test_packaged_minilm_is_the_upstream_checkpoint(tmp_path):
    checkpoint = packaged_minilm(tmp_path / "cache")
    assert checkpoint.weights_sha256 == MINILM_SHA256
    assert checkpoint.hidden_size == 384 and checkpoint.config["num_hidden_layers"] == 6
    assert special_ids(load_tokenizer(checkpoint.tokenizer_file)) == SpecialIds(
        pad=0, unk=100, cls=101, sep=102, mask=103)
    encoder = load_encoder(checkpoint)
    # 22.7M with the pooler, which fedssl does not load (mean pooling instead)
    assert sum(p.numel() for p in encoder.parameters()) == 22_565_376
