"""Fetching: verified, atomic, refetching corrupt sets; loaders refuse missing or corrupt data.

Fake sources stand in for the registries: their "fetch command" is a Python one-liner that
writes a small archive the test made, so nothing here needs the network.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from dlopt.data import catalog, fetch
from dlopt.data.__main__ import main as cli


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _fake_source(tmp_path, files: dict[str, bytes], kind="tar", name="fake", archive_sha=None,
                 command_fails=False):
  """A Source whose command copies a prepared archive of `files` into the working dir."""
  stash = tmp_path / "registry"
  stash.mkdir(exist_ok=True)
  archive = stash / ("fake.tgz" if kind == "tar" else "fake.whl")
  if kind == "tar":
    with tarfile.open(archive, "w:gz") as tar:
      for path, data in files.items():
        info = tarfile.TarInfo(path)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  else:
    with zipfile.ZipFile(archive, "w") as z:
      for path, data in files.items():
        z.writestr(path, data)
  copy = (f"import shutil, sys; shutil.copy({str(archive)!r}, {archive.name!r}); "
          f"sys.exit({1 if command_fails else 0})")
  members = tuple(fetch.Member(path, _sha(data)) for path, data in files.items())
  return fetch.Source(name, "a fake set", (sys.executable, "-c", copy), archive.name,
                      archive_sha or _sha(archive.read_bytes()), kind, members)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("DLOPT_DATA_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


FILES = {"pkg/data/a.txt": b"alpha\n", "pkg/data/b.bin": bytes(range(256))}


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_fetch_then_require(tmp_path, cache, kind):
  source = _fake_source(tmp_path, FILES, kind=kind)
  assert fetch.status(source) == "missing"
  directory = fetch.fetch(source, log=lambda _: None)
  assert directory == cache / "fake"
  assert (directory / "a.txt").read_bytes() == b"alpha\n"
  assert fetch.require(source) == directory
  assert sorted(p.name for p in cache.iterdir()) == ["fake"]  # no scratch left behind


def test_missing_set_names_the_command(tmp_path):
  source = _fake_source(tmp_path, FILES)
  with pytest.raises(FileNotFoundError, match="python -m dlopt.data fetch fake"):
    fetch.require(source)
  with pytest.raises(FileNotFoundError, match="python -m dlopt.data fetch mnist"):
    catalog.load_mnist()


def test_corrupt_set_is_refused_then_refetched(tmp_path, cache):
  source = _fake_source(tmp_path, FILES)
  fetch.fetch(source, log=lambda _: None)
  (cache / "fake" / "b.bin").write_bytes(b"truncated")
  assert fetch.status(source) == "corrupt: b.bin"
  with pytest.raises(FileNotFoundError, match="corrupt.*refetch it with: python -m dlopt"):
    fetch.require(source)
  messages = []
  fetch.fetch(source, log=messages.append)
  assert "corrupt" in messages[0]
  assert (cache / "fake" / "b.bin").read_bytes() == bytes(range(256))


@pytest.mark.parametrize("failure", ["command", "archive checksum", "member checksum"])
def test_failed_fetch_leaves_the_cache_as_it_was(tmp_path, cache, failure):
  (tmp_path / "good").mkdir()
  good = _fake_source(tmp_path / "good", FILES)
  fetch.fetch(good, log=lambda _: None)
  before = {p.name: p.read_bytes() for p in (cache / "fake").iterdir()}
  if failure == "command":
    bad = _fake_source(tmp_path, FILES, command_fails=True)
  elif failure == "archive checksum":
    bad = _fake_source(tmp_path, FILES, archive_sha="0" * 64)
  else:
    bad = _fake_source(tmp_path, {**FILES, "pkg/data/a.txt": b"tampered\n"})
    bad = fetch.Source(bad.name, bad.description, bad.command, bad.archive, bad.archive_sha256,
                       bad.kind, good.members)
  with pytest.raises(fetch.FetchError):
    fetch.fetch(bad, force=True, log=lambda _: None)
  assert {p.name: p.read_bytes() for p in (cache / "fake").iterdir()} == before
  assert sorted(p.name for p in cache.iterdir()) == ["fake"]


def test_missing_client_is_a_clear_error(tmp_path):
  source = fetch.Source("fake", "", ("no-such-registry-client",), "x.tgz", "0" * 64, "tar", ())
  with pytest.raises(fetch.FetchError, match="cannot run 'no-such-registry-client'"):
    fetch.fetch(source, log=lambda _: None)


def test_cli_lists_and_rejects_unknown_names(capsys):
  assert cli(["list"]) == 0
  out = capsys.readouterr().out
  for name in ("mnist", "fashion_mnist", "ucr", "canterbury"):
    assert name in out
  with pytest.raises(SystemExit) as exit_info:
    cli(["fetch", "cifar10"])
  assert exit_info.value.code == 2
  assert "unknown data set 'cifar10'" in capsys.readouterr().err


def test_every_source_pins_its_checksums():
  for source in fetch.SOURCES.values():
    assert len(source.archive_sha256) == 64 and source.members
    assert all(len(m.sha256) == 64 for m in source.members)
    assert source.kind in ("tar", "zip", "deb")


def test_real_sets_when_cached(monkeypatch):
  """Checks the real data when this machine has fetched it (skipped otherwise)."""
  monkeypatch.delenv("DLOPT_DATA_DIR")
  if fetch.status("mnist") != "valid":
    pytest.skip("MNIST not fetched here (python -m dlopt.data fetch mnist)")
  x, y = catalog.load_mnist("train")
  assert x.shape == (60000, 28, 28, 1) and list(y[:5]) == [5, 0, 4, 1, 9]
  assert np.isclose(x.max(), 1.0)
