"""The float model's predictions saved to a file, to judge other models against them later.

`int8wb eval --save-reference FILE` writes the `divergence.Reference` of the evaluation: the tokens,
the top-k log-probabilities per position and the log-probability of each next token, in a NumPy
.npz archive (no pickled objects), with the identity of the tokenizer that made the tokens.
`int8wb eval --model M --reference FILE` reads it back and evaluates M on exactly those tokens,
so the float model need not be loaded at the same time (an export opened alone, a model run
layer by layer). A reference made with another tokenizer or on other tokens is refused with the
difference named: KL between predictions over different tokens means nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from int8wb.engine.errors import BadInput
from int8wb.engine.measure.divergence import Reference

FORMAT = "int8wb-reference"
VERSION = 1
ARRAYS = ("token_ids", "top_ids", "top_logprobs", "target_logprobs")


def tokenizer_identity(tokenizer) -> dict:
    """What makes two tokenizers the same for the evaluation: class, vocabulary size, digest of the vocabulary."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    text = json.dumps(sorted(vocab.items()), ensure_ascii=False)
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(vocab) or int(getattr(tokenizer, "vocab_size", 0)),
        "vocab_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def check_writable(path: str | os.PathLike) -> Path:
    """BadInput, before any model runs, when the reference could not be written at `path`."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path} is a directory: give the reference a file name")
    if not path.parent.is_dir():
        raise BadInput(f"the folder of {path} does not exist")
    return path


def save(reference: Reference, path: str | os.PathLike) -> Path:
    """Write `reference` to `path` (a temporary file renamed into place, so a failed write keeps the old one)."""
    path = check_writable(path)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": reference.tokenizer,
        "model": reference.model,
        "corpus": reference.corpus,
    }
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), **{name: getattr(reference, name) for name in ARRAYS})
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BadInput(f"could not write the reference {path}: {exc.strerror or exc}") from exc
    return path


def load(path: str | os.PathLike) -> Reference:
    """The reference in `path`; BadInput for a missing, foreign or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no reference file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInput(f"{path} is not a readable int8wb reference ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInput(f"{path} is not an int8wb reference (made by `int8wb eval --save-reference`)")
    if meta.get("version") != VERSION:
        raise BadInput(f"{path} is a reference of format version {meta.get('version')}; this workbench reads {VERSION}")
    _check_shapes(path, arrays)
    return Reference(
        token_ids=arrays["token_ids"].astype(np.int64),
        top_ids=arrays["top_ids"].astype(np.int32),
        top_logprobs=arrays["top_logprobs"].astype(np.float32),
        target_logprobs=arrays["target_logprobs"].astype(np.float32),
        tokenizer=dict(meta.get("tokenizer") or {}),
        model=str(meta.get("model", "")),
        corpus=str(meta.get("corpus", "")),
    )


def _check_shapes(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tokens, top_ids, top_logprobs, targets = (arrays[name] for name in ARRAYS)
    positions = tokens.shape[0] * (tokens.shape[1] - 1) if tokens.ndim == 2 else -1
    consistent = (
        tokens.ndim == 2
        and tokens.shape[1] > 1
        and top_ids.ndim == 2
        and top_ids.shape == top_logprobs.shape
        and top_ids.shape[0] == positions
        and targets.shape == (positions,)
        and top_ids.shape[1] >= 1
        and np.isfinite(top_logprobs).all()
        and np.isfinite(targets).all()
        and (tokens >= 0).all()
        and (top_ids >= 0).all()
    )
    if not consistent:
        raise BadInput(f"{path} is a damaged reference: its arrays do not fit together")


def check_matches(reference: Reference, token_ids: np.ndarray, tokenizer: dict, vocab_size: int) -> None:
    """BadInput naming the difference unless `reference` was made with this tokenizer on these tokens."""
    theirs, ours = reference.tokenizer, tokenizer
    if theirs.get("vocab_sha256") != ours["vocab_sha256"]:
        raise BadInput(
            "the reference was made with another tokenizer: "
            f"{theirs.get('class')} with {theirs.get('vocab_size')} tokens (vocabulary {str(theirs.get('vocab_sha256'))[:12]}), "
            f"this model's is {ours['class']} with {ours['vocab_size']} tokens (vocabulary {ours['vocab_sha256'][:12]})"
        )
    if int(reference.top_ids.max(initial=0)) >= vocab_size:
        raise BadInput(
            f"the reference names token ids up to {int(reference.top_ids.max())}; the model has {vocab_size}"
        )
    if reference.token_ids.shape != token_ids.shape:
        (n, w), (m, v) = reference.token_ids.shape, token_ids.shape
        raise BadInput(
            f"the reference holds {n} windows of {w} tokens ({n * w:,} tokens); this evaluation has {m} windows of {v} "
            f"({m * v:,}): evaluate with --tokens {n * w} --window {w}"
        )
    differ = np.flatnonzero(reference.token_ids.reshape(-1) != np.asarray(token_ids).reshape(-1))
    if differ.size:
        raise BadInput(
            f"the reference was made on other tokens: {differ.size:,} of {token_ids.size:,} differ, the first at "
            f"position {int(differ[0]):,} (another corpus or another tokenization of it; the reference's corpus: "
            f"{reference.corpus})"
        )
