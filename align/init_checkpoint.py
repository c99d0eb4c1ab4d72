"""The Hugging Face folder a job starts from (``<run>/init``): built once, rebuilt when its source
changes, and linked to ``model.path`` rather than copied.

``align_init.json`` in the folder records what it was built from: the recipe's ``model`` and
``tokenizer`` sections (a template by its content's hash) and, for a checkpoint, the name, size
and modification time of every file of ``model.path`` (and of ``tokenizer.path``). A folder whose
record differs from the recipe's is rebuilt, with one line saying why. A folder without a record
(written by an older align) is reused for the tiny world, as before, and rebuilt for a checkpoint.

From ``model.path`` (a local folder, or a hub id resolved to its cache folder), each file is a
symlink to the checkpoint's file (the checkpoint is never written to), except what align changes
(:mod:`align.byom`): the tokenizer files when reasoning tokens are added, the template is wrapped
or replaced, or ``tokenizer.path`` names another tokenizer; the weights only when the added tokens
do not fit in the embedding rows the checkpoint already has (many checkpoints pad their
vocabulary), in which case the model is loaded, resized and saved. One line says what was done.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from align.byom import REASONING_TOKENS, prepare_tokenizer, template_digest
from align.config.sections import ModelConfig, TokenizerConfig
from align.models import build_tiny_model, load_model, load_tokenizer
from align.tiny.tokenizer import train_tokenizer

RECORD = "align_init.json"
_FORMAT = 1
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
})  # fmt: skip
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def source_dir(path: str) -> Path:
    """A local folder as is; a hub id as its snapshot folder in the Hugging Face cache (downloaded if allowed)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path))


def _files(folder: Path) -> list[list[Any]]:
    return sorted([f.name, st.st_size, st.st_mtime_ns] for f in folder.iterdir() if f.name != RECORD for st in [f.stat()])


def fingerprint(model_cfg: ModelConfig, tokenizer_cfg: TokenizerConfig, seed: int) -> dict[str, Any]:
    """What ``<run>/init`` is built from (JSON-ready); equal fingerprints give equal folders."""
    fp: dict[str, Any] = {
        "format": _FORMAT,
        "reasoning_tokens": list(REASONING_TOKENS),
        "tokenizer": {**tokenizer_cfg.model_dump(), "chat_template": template_digest(tokenizer_cfg.chat_template)},
    }
    if model_cfg.path is None:
        fp.update(tiny=model_cfg.model_dump(), seed=seed)
    else:
        src = source_dir(model_cfg.path)
        fp["model"] = {"path": model_cfg.path, "dir": str(src), "dtype": model_cfg.dtype, "files": _files(src)}
    if tokenizer_cfg.path is not None:
        fp["tokenizer_files"] = _files(source_dir(tokenizer_cfg.path))
    return json.loads(json.dumps(fp))


def _why(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("model", {}).get("path") != new.get("model", {}).get("path"):
        return f"model.path changed ({old.get('model', {}).get('path')!r} -> {new.get('model', {}).get('path')!r})"
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return "changed since it was built: " + ", ".join({"model": "the files of model.path", "tokenizer_files": "the files of tokenizer.path"}.get(k, k) for k in changed)


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def prepare_initial_checkpoint(
    model_cfg: ModelConfig,
    tokenizer_cfg: TokenizerConfig,
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> Path:
    """Write (or reuse) the HF folder (weights + tokenizer) a job starts from, and return its path.

    A resumed run finds the same record and starts from the same weights. ``texts`` train the
    tiny world's tokenizer (default: the world's own text); ``say`` prints the one-line notes.
    """
    out = Path(out_dir)
    want = fingerprint(model_cfg, tokenizer_cfg, seed)
    if (out / "config.json").is_file():
        have = _read_record(out)
        if have == want or (have is None and model_cfg.path is None):
            return out
        say(f"rebuilding {out}: " + (_why(have, want) if have else "it has no record of its source (align_init.json)"))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if model_cfg.path is None:
        _build_tiny(model_cfg, tokenizer_cfg, tmp, texts, seed)
    else:
        say(f"{out}: {_build_from_checkpoint(model_cfg, tokenizer_cfg, tmp)}")
    (tmp / RECORD).write_text(json.dumps(want, indent=1))
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _build_tiny(model_cfg: ModelConfig, tokenizer_cfg: TokenizerConfig, tmp: Path, texts: Iterable[str] | None, seed: int) -> None:
    if tokenizer_cfg.path is not None:
        tokenizer = load_tokenizer(source_dir(tokenizer_cfg.path))
    else:
        if texts is None:
            from align.tiny.world import world_texts

            texts = world_texts(seed=seed)
        tokenizer = train_tokenizer(texts, vocab_size=tokenizer_cfg.vocab_size)
    prepare_tokenizer(tokenizer, tokenizer_cfg.chat_template)
    build_tiny_model(model_cfg, tokenizer, seed=seed).save_pretrained(str(tmp), safe_serialization=True)
    if model_cfg.dtype == "bfloat16":
        # Initialised in float32 (the same weights whatever the dtype), then cast as transformers
        # casts a checkpoint it loads, so the result is what a real bf16 checkpoint holds (its
        # _keep_in_fp32_modules_strict, NemotronH's expert-bias buffer, stay float32).
        load_model(tmp, "bfloat16").save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))


def _build_from_checkpoint(model_cfg: ModelConfig, tokenizer_cfg: TokenizerConfig, tmp: Path) -> str:
    """Fill ``tmp`` from ``model.path``: links plus what changed; returns the line that says so."""
    assert model_cfg.path is not None
    src = source_dir(model_cfg.path)
    tokenizer = load_tokenizer(source_dir(tokenizer_cfg.path) if tokenizer_cfg.path is not None else src)
    notes = prepare_tokenizer(tokenizer, tokenizer_cfg.chat_template)
    rows = AutoConfig.from_pretrained(str(src)).get_text_config().vocab_size
    resized = len(tokenizer) > rows
    if resized:
        model = load_model(src, model_cfg.dtype)
        model.resize_token_embeddings(len(tokenizer))
        model.save_pretrained(str(tmp), safe_serialization=True)
        notes.append(f"embeddings resized from {rows} to {len(tokenizer)} rows (weights written)")
    elif len(tokenizer) > len(load_tokenizer(src)):
        notes.append(f"the new tokens fit the checkpoint's {rows} embedding rows (weights linked)")
    own_tokenizer = bool(notes) or tokenizer_cfg.path is not None
    if own_tokenizer:
        tokenizer.save_pretrained(str(tmp))
    linked = 0
    for f in sorted(src.iterdir()):
        skip = (
            f.name.startswith(".") or f.name == RECORD or (tmp / f.name).exists()
            or (own_tokenizer and f.name in TOKENIZER_FILES)
            or (resized and (f.name == "config.json" or f.name.endswith(_WEIGHTS)))
        )  # fmt: skip
        if not skip:
            (tmp / f.name).symlink_to(f.resolve())
            linked += 1
    done = "; ".join(notes) if notes else "nothing to change"
    return f"{done}; {linked} files linked from {src}"
