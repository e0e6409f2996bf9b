"""Loading a model from a built-in asset, a local folder, a GGUF file or the hub.

A GGUF file is converted once into an ordinary transformers folder, cached under
``$COMPRESSOR_CACHE/gguf/<sha256 of the file>``. transformers dequantises GGUF weights
into float ``nn.Linear`` layers on load, and reloading the folder is far faster than
converting again (SmolLM2: about 17 s to convert, 0.3 s to reload, on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from compressor import assets
from compressor.errors import CompressorError
from compressor.models.adapters import find_adapter
from compressor.models.export import EXPORT_RECORD
from compressor.models.handle import ModelHandle
from compressor.recipe import ModelSpec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_MAGIC = b"GGUF"

# Files whose size and modification time identify a local model folder.
_IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".gguf")


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def folder_identity(folder: Path) -> dict[str, Any]:
    """Describe a model folder by the name, size and mtime of its config, weight and tokenizer files."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _IDENTITY_SUFFIXES:
            stat = path.stat()
            files[path.name] = [stat.st_size, stat.st_mtime_ns]
    return {"folder": str(folder.resolve()), "files": files}


# --------------------------------------------------------------------------- GGUF


def check_gguf(path: Path) -> None:
    """Raise unless ``path`` is a readable file that starts with the GGUF magic bytes."""
    if not path.is_file():
        raise CompressorError(f"GGUF file {str(path)!r} not found; check the path")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise CompressorError(
            f"{str(path)!r} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}. "
            "The file may be truncated or corrupt; download it again"
        )


def convert_gguf(gguf: Path, out: Path) -> None:
    """Convert a GGUF file into a transformers folder ``out`` (model and tokenizer, float32).

    transformers will not ``save_pretrained`` a model loaded from GGUF while it keeps the
    GGUF quantizer, so the quantizer and ``config.quantization_config`` are removed first.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(gguf)
    log.info("converting %s to a transformers folder (done once per file)", gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for a bad file
        raise CompressorError(
            f"transformers could not load GGUF file {str(gguf)!r}: {type(exc).__name__}: {exc}. "
            "The file may be corrupt, or its architecture unsupported by transformers' GGUF reader"
        ) from exc

    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _apply_gguf_bos_setting(gguf, tokenizer)
    _repair_sentencepiece_bpe(gguf, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _apply_gguf_bos_setting(gguf: Path, tokenizer) -> None:
    """Copy the GGUF file's ``tokenizer.ggml.add_bos_token`` flag onto the tokenizer.

    transformers 5.17 drops this flag on conversion, so the Gemma 3 tokenizer stopped
    adding BOS, although Gemma 3 scores far worse without it.
    """
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.add_bos_token")
    if field is None:
        return
    add_bos = bool(field.contents())
    if getattr(tokenizer, "add_bos_token", None) != add_bos:
        log.info("setting add_bos_token=%s on the tokenizer, as the GGUF file requests", add_bos)
        tokenizer.add_bos_token = add_bos


# Part of the cache key of converted GGUF folders. Raised when convert_gguf changes its
# output (version 2 repairs SentencePiece BPE tokenizers), so older folders are not reused.
GGUF_CONVERSION_VERSION = 2
# GGUF token type of ordinary pieces (gguf.TokenType.NORMAL); only these come from merges.
_GGUF_NORMAL_TOKEN = 1


def _first_ids(tokens: list[str]) -> dict[str, int]:
    """Map each piece to its first id; a piece listed twice keeps the lower id."""
    ids: dict[str, int] = {}
    for index, token in enumerate(tokens):
        ids.setdefault(token, index)
    return ids


def sentencepiece_bpe_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Derive BPE merges from a SentencePiece BPE vocabulary, whose scores rank its pieces.

    A normal piece of two or more characters is made by merging any split of it into two
    pieces that are both in the vocabulary. Its merges take the piece's priority (a higher
    score merges first), and splits of one piece are ordered by the ids of their halves.
    """
    ids = _first_ids(tokens)
    ranked: list[tuple[float, int, int, str, str]] = []
    for index, piece in enumerate(tokens):
        if types[index] != _GGUF_NORMAL_TOKEN or len(piece) < 2 or ids[piece] != index:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-float(scores[index]), ids[left], ids[right], left, right))
    ranked.sort(key=lambda item: item[:3])
    return [(left, right) for _, _, _, left, right in ranked]


def _repair_sentencepiece_bpe(gguf: Path, tokenizer) -> None:
    """Rebuild a SentencePiece BPE tokenizer that transformers converted as a Unigram model.

    transformers 5.17 turns the Gemma 3 GGUF vocabulary (``tokenizer.ggml.model`` "llama",
    scores that rank BPE merges) into a Unigram model. That splits words badly ("▁P", "res",
    "id", "ent" for "▁President"), and ``save_pretrained`` then writes a BPE model with no
    merges, which encodes text one character at a time. On 256 tokens of a 2015 State of the
    Union address, Gemma 3 270M scored a perplexity of 245 (converted tokenizer, BOS added)
    and 6,950 (saved tokenizer), against 13 after the repair. The repaired tokenizer is a
    byte-fallback BPE model with the merges that the scores define. It keeps the normalizer,
    pre-tokenizer, decoder and special tokens that transformers built.
    """
    from gguf import GGUFReader
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    state = json.loads(backend.to_str())
    if state["model"]["type"] != "Unigram":
        return
    fields = GGUFReader(str(gguf)).fields
    if "tokenizer.ggml.model" not in fields or fields["tokenizer.ggml.model"].contents() != "llama":
        return
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    scores = list(fields["tokenizer.ggml.scores"].contents())
    types = list(fields["tokenizer.ggml.token_type"].contents())
    unk = fields["tokenizer.ggml.unknown_token_id"].contents() if "tokenizer.ggml.unknown_token_id" in fields else None
    merges = sentencepiece_bpe_merges(tokens, scores, types)
    vocab = _first_ids(tokens)
    state["model"] = {
        "type": "BPE", "dropout": None, "unk_token": None if unk is None else tokens[int(unk)],
        "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
        "byte_fallback": True, "ignore_merges": False, "vocab": vocab, "merges": [list(m) for m in merges],
    }
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))
    log.info("rebuilt the GGUF SentencePiece tokenizer as BPE with %d merges (transformers read it as Unigram)",
             len(merges))


def _cached_gguf_folder(gguf: Path) -> tuple[Path, str]:
    """Return the converted folder of a GGUF file, converting it on first use, and the file's sha256."""
    check_gguf(gguf)
    sha = assets.sha256_file(gguf)
    target = assets.cache_dir() / "gguf" / f"{sha[:32]}-v{GGUF_CONVERSION_VERSION}"
    if (target / "config.json").is_file():
        return target, sha

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}.", dir=target.parent))
    try:
        convert_gguf(gguf, work / "model")
        (work / "model" / "source.json").write_text(json.dumps({"gguf": str(gguf.resolve()), "sha256": sha}))
        if not target.exists():
            os.replace(work / "model", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target, sha


# --------------------------------------------------------------------------- sources


def _looks_like_path(source: str) -> bool:
    """Return whether ``source`` cannot be a hub id, which is ``name`` or ``owner/name``."""
    return source.startswith((".", "/", "~")) or source.endswith(".gguf") or source.count("/") > 1


def _resolve_source(spec: ModelSpec) -> tuple[str, dict[str, Any], str | None]:
    """Return (folder or hub id to load, identity of the source, GGUF sha256 if any)."""
    source = spec.source
    if assets.is_asset(source):
        asset = assets.ASSETS[source.partition(":")[0]]
        if asset.kind != "model":
            raise CompressorError(f"asset {source!r} is a {asset.kind}, not a model; model assets: "
                                  + ", ".join(n for n, a in assets.ASSETS.items() if a.kind == "model"))
        folder = assets.asset_path(source)
        return str(folder), {"asset": source, "packages": assets.manifest(source)["packages"]}, None

    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise CompressorError(f"model source {source!r} is a file but not a .gguf file; give a model folder, "
                                  "a .gguf file, an asset name or a hub id")
        folder, sha = _cached_gguf_folder(path)
        return str(folder), {"gguf_sha256": sha}, sha
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CompressorError(f"model folder {source!r} has no config.json; point at a folder written by "
                                  "save_pretrained (or `compressor run`)")
        return str(path), folder_identity(path), None
    if _looks_like_path(source):
        raise CompressorError(f"model path {source!r} not found; check the path, or run `compressor assets list` "
                              "for the built-in models")
    return source, {"hub": source, "revision": spec.revision or "main"}, None


def _load_hub_or_folder(where: str, spec: ModelSpec, is_hub: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if is_hub and spec.revision:
        kwargs["revision"] = spec.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[spec.dtype], **kwargs)
    except OSError as exc:
        if is_hub:
            raise CompressorError(
                f"could not load {where!r} from the Hugging Face hub ({exc}). If this machine is offline, "
                "use a built-in model (`compressor assets list`, for example smollm2-135m) or a local folder"
            ) from exc
        raise CompressorError(f"could not load model folder {where!r}: {exc}") from exc
    return model, tokenizer


def load_model(spec: ModelSpec, registry=None) -> ModelHandle:
    """Load the model that ``spec`` names and wrap it in a :class:`ModelHandle`.

    ``base_fingerprint`` hashes the identity of the source (asset packages and their
    sha256, folder file sizes and mtimes, GGUF sha256, or hub id and revision) with the
    dtype. A folder written by :func:`compressor.models.save_model` keeps its history:
    its removed layers and quantization are read back from ``compressor.json``.
    """
    where, identity, gguf_sha = _resolve_source(spec)
    is_hub = "hub" in identity
    model, tokenizer = _load_hub_or_folder(where, spec, is_hub)
    model.to(spec.device)
    model.eval()

    adapter = find_adapter(model, registry)
    num_layers = len(adapter.get_layers(model))
    handle = ModelHandle(
        model=model, tokenizer=tokenizer, adapter=adapter, source=spec.source,
        base_fingerprint=_digest({"source": identity, "dtype": spec.dtype}),
        num_original_layers=num_layers, dtype=DTYPES[spec.dtype], device=spec.device,
        info={"path": where, "architecture": adapter.name},
    )
    if gguf_sha:
        handle.info["gguf_sha256"] = gguf_sha

    record_path = Path(where) / EXPORT_RECORD
    if not is_hub and record_path.is_file():
        _apply_export_record(handle, json.loads(record_path.read_text()), num_layers)
    log.info("loaded %s: %s, %d layers, %s", spec.source, type(model).__name__, num_layers, spec.dtype)
    return handle


def _apply_export_record(handle: ModelHandle, record: dict[str, Any], num_layers: int) -> None:
    original = int(record.get("num_original_layers", num_layers))
    removed = [int(i) for i in record.get("removed_layers", [])]
    if original - len(removed) != num_layers:
        log.warning("ignoring %s: it records %d - %d layers but the model has %d",
                    EXPORT_RECORD, original, len(removed), num_layers)
        return
    handle.num_original_layers = original
    handle.removed_layers = removed
    handle.quantization = record.get("quantization")
    handle.info["exported_from"] = record.get("source")
