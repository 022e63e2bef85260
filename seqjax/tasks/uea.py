"""Time-series classification from the UEA/UCR archive: a series's channels are the inputs of
each step, its class is read at its last valid step; unequal lengths go through `lengths`.

Dataset NAME is read from `data_dir`, nothing ever downloaded, installed or imported:
- `NAME_TRAIN.ts` and `NAME_TEST.ts` there (they win when the wheel is there too), else
- the sktime wheel there (`sktime-*.whl`, as `pip download --no-deps sktime -d DIR` gives it):
  its `sktime/datasets/data/NAME/NAME_{TRAIN,TEST}.ts`, read straight from the zip.

The `.ts` format (sktime's): comment lines (`#`, `%`); a header of `@` lines (`@problemName`,
`@timeStamps false`, `@missing`, `@univariate`, `@dimensions`, `@equalLength`, `@seriesLength`,
`@classLabel true L1 L2 ...`); then `@data` and one series a line: its channels separated by `:`,
each channel's values by `,`, the class label last. Missing values (`?`), time stamps and files
without class labels (regression) are refused; so is anything malformed, in one line naming the
file and the line.

Inputs are standardised per channel with the mean and standard deviation over the valid steps of
the series trained on (a constant channel is only centred). Series are padded with 0 to the
longest of the dataset (both files), so T does not depend on the split. Classes are numbered in
the order `@classLabel` lists them.

eval_split="test" trains on the whole training file and evaluates on the test file (the archive's
split); "validation" holds out a fixed fifth of the training file (shuffled with SPLIT_SEED, its
last fifth: the same in every run), trains on the rest and evaluates on that fifth.
"""

import functools
import glob
import os
import re
import zipfile
from typing import NamedTuple

import numpy as np

from seqjax.tasks._checks import check_choice
from seqjax.tasks._dataset import EVAL_SPLIT, sequence_task
from seqjax.tasks.base import Option, OptionError

SPLIT_SEED, VALIDATION_FRACTION = 0, 0.2
WHEEL_GLOB = "sktime-*.whl"
WHEEL_DATA = "sktime/datasets/data"  # NAME/NAME_TRAIN.ts, NAME/NAME_TEST.ts inside the wheel
PARTS = ("TRAIN", "TEST")
NAME_PATTERN = r"[A-Za-z0-9_\-]+"
DEFAULTS = dict(hidden_size=128, batch_size=32, num_steps=1500, learning_rate=1e-3)
OPTIONS = (
    Option("dataset", str, None, "The archive's dataset NAME (e.g. JapaneseVowels, PLAID): "
           "NAME_TRAIN.ts and NAME_TEST.ts in --data_dir, or inside the sktime wheel there."),
    Option("data_dir", str, None, "Folder with NAME_TRAIN.ts and NAME_TEST.ts, or the sktime "
           "wheel (pip download --no-deps sktime -d DIR)."),
    EVAL_SPLIT,  # test: the archive's split; validation: a fixed fifth of the training file
)


class Series(NamedTuple):
  """One `.ts` file's series."""
  values: list          # one float64 array [T_i, C] per series
  labels: np.ndarray    # [N] int32: indices into classes
  classes: tuple        # the class labels, as @classLabel lists them


_FLAGS = ("timestamps", "missing", "univariate", "equallength")  # true | false headers


def parse_ts(text: str, where: str) -> Series:
  """The series of a `.ts` file's text; ValueError "WHERE line N: what is wrong" otherwise."""
  header, values, labels, classes = {}, [], [], None
  number = 0
  for number, raw in enumerate(text.splitlines(), 1):
    line = raw.strip()
    if not line or line.startswith(("#", "%")):
      continue

    def bad(what):
      return ValueError(f"{where} line {number}: {what}")

    if classes is None:  # still in the header
      if not line.startswith("@"):
        raise bad("a data line before @data")
      tag, *words = line[1:].split()
      tag = tag.lower()
      if tag == "data":
        if "classlabel" not in header:
          raise bad("@data without a @classLabel line before it")
        classes = header["classlabel"]
      else:
        header[tag] = _header_value(tag, words, bad)
      continue
    series, label = _data_line(line, header, values, bad)
    if label not in classes:
      raise bad(f"class label {label!r} is not one of @classLabel's ({' '.join(classes)})")
    values.append(series)
    labels.append(classes.index(label))
  if classes is None:
    raise ValueError(f"{where}: no @data line")
  if not values:
    raise ValueError(f"{where}: no series after @data")
  return Series(values, np.asarray(labels, np.int32), classes)


def _header_value(tag: str, words: list, bad):
  if tag in _FLAGS:
    if words not in (["true"], ["false"]):
      raise bad(f"@{tag} must be true or false, got {' '.join(words)!r}")
    if tag == "timestamps" and words == ["true"]:
      raise bad("time-stamped series (@timeStamps true) are not supported")
    return words == ["true"]
  if tag in ("dimensions", "serieslength"):
    if len(words) != 1 or not words[0].isdigit() or int(words[0]) < 1:
      raise bad(f"@{tag} must be an integer >= 1, got {' '.join(words)!r}")
    return int(words[0])
  if tag == "classlabel":
    if not words or words[0] != "true":
      raise bad("no class labels (@classLabel must be true): the uea task classifies series")
    if len(words) < 2 or len(set(words[1:])) != len(words) - 1:
      raise bad("@classLabel true must list distinct class labels")
    return tuple(words[1:])
  if tag == "targetlabel":
    raise bad("a regression file (@targetLabel): the uea task classifies series")
  if tag == "problemname":
    return " ".join(words)
  raise bad(f"unknown header @{tag}")


def _data_line(line: str, header: dict, previous: list, bad):
  """(values [T, C] float64, label) of one series."""
  *channels, label = line.split(":")
  if not channels:
    raise bad("no ':' before a class label (expected channels separated by ':', the label last)")
  expected = header.get("dimensions", 1 if header.get("univariate") else None)
  if expected is None and previous:
    expected = previous[0].shape[1]
  if expected is not None and len(channels) != expected:
    source = "@dimensions" if "dimensions" in header else \
        "@univariate true" if header.get("univariate") else "the first series"
    raise bad(f"{len(channels)} channels, {source} says {expected}")
  rows = []
  for c, channel in enumerate(channels):
    words = channel.split(",")
    if "?" in (w.strip() for w in words):
      raise bad("a missing value '?': series with missing values are not supported")
    try:
      rows.append([float(w) for w in words])
    except ValueError:
      word = next(w for w in words if not _is_float(w))
      raise bad(f"channel {c + 1}: {word.strip()!r} is not a number") from None
  lengths = sorted({len(r) for r in rows})
  if len(lengths) > 1:
    raise bad(f"channels of unequal lengths {lengths}: a series's channels share its steps")
  series = np.asarray(rows, np.float64).T
  if not np.isfinite(series).all():
    raise bad("a value that is not finite (nan or inf)")
  if header.get("equallength") and "serieslength" in header and \
      len(series) != header["serieslength"]:
    raise bad(f"{len(series)} steps, @seriesLength says {header['serieslength']}")
  return series, label.strip()


def _is_float(word: str) -> bool:
  try:
    float(word)
  except ValueError:
    return False
  return True


def _wheel(data_dir: str):
  wheels = sorted(glob.glob(os.path.join(glob.escape(data_dir), WHEEL_GLOB)))
  if len(wheels) > 1:
    raise OptionError("data_dir", data_dir, f"holds several sktime wheels "
                      f"({', '.join(os.path.basename(w) for w in wheels)}): keep one")
  return wheels[0] if wheels else None


def _zip_names(wheel: str) -> list:
  try:
    with zipfile.ZipFile(wheel) as z:
      return z.namelist()
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{wheel}: not a readable zip ({e})") from None


def available(data_dir: str) -> list:
  """The dataset names in data_dir: both `.ts` files there, or both inside the sktime wheel."""
  def complete(paths, pattern):
    found = {}
    for path in paths:
      m = re.fullmatch(pattern, path)
      if m:
        found.setdefault(m.group(1), set()).add(m.group(2))
    return {name for name, parts in found.items() if parts == set(PARTS)}

  names = complete(os.listdir(data_dir), rf"({NAME_PATTERN})_(TRAIN|TEST)\.ts")
  wheel = _wheel(data_dir)
  if wheel:
    names |= complete(_zip_names(wheel), rf"{WHEEL_DATA}/({NAME_PATTERN})/\1_(TRAIN|TEST)\.ts")
  return sorted(names)


def _texts(data_dir: str, dataset: str) -> list:
  """[(where, text)] of the TRAIN and TEST files."""
  files = [os.path.join(data_dir, f"{dataset}_{part}.ts") for part in PARTS]
  if any(os.path.exists(f) for f in files):
    out = []
    for f in files:
      try:
        with open(f, "rb") as handle:
          out.append((f, handle.read()))
      except OSError as e:
        raise ValueError(f"{f}: cannot be read ({e.strerror or e})") from None
  else:
    wheel, members = _wheel(data_dir), [f"{WHEEL_DATA}/{dataset}/{dataset}_{p}.ts" for p in PARTS]
    if wheel is None or not set(members) <= set(_zip_names(wheel)):
      found = available(data_dir)
      raise OptionError("dataset", dataset, f"not in --data_dir={data_dir}; found there: "
                        f"{', '.join(found) if found else 'none'}")
    out = []
    try:
      with zipfile.ZipFile(wheel) as z:
        for m in members:
          out.append((f"{wheel} ({m})", z.read(m)))
    except (OSError, zipfile.BadZipFile, RuntimeError) as e:
      raise ValueError(f"{wheel}: cannot be read ({type(e).__name__}: {e})") from None
  # a comment may hold any bytes; a data line with a stray byte fails as "not a number"
  return [(where, raw.decode("utf-8", errors="replace")) for where, raw in out]


def _sources(data_dir: str, dataset: str) -> tuple:
  """(path, size, mtime) of the files `_texts` reads: the two `.ts` files where either is
  there, else the wheel; () where there is neither (`_texts` says so)."""
  files = [os.path.join(data_dir, f"{dataset}_{part}.ts") for part in PARTS]
  if not any(os.path.exists(f) for f in files):
    wheel = _wheel(data_dir)
    files = [wheel] if wheel else []
  out = []
  for f in files:
    try:
      st = os.stat(f)
      out.append((f, st.st_size, st.st_mtime_ns))
    except OSError:
      out.append((f, None, None))  # `_texts` names what is wrong with it
  return tuple(out)


def load(data_dir: str, dataset: str):
  """(train, test) Series of `dataset` in data_dir, checked to agree (channels, classes). Parsed
  once per version of its files: a launch builds the task twice (`Settings.resolved` learns its
  length from it, `validate` builds it), and `launch.compare` once per group."""
  return _load(data_dir, dataset, _sources(data_dir, dataset))


@functools.lru_cache(maxsize=2)
def _load(data_dir: str, dataset: str, sources: tuple):
  """`load`; `sources` (the files' sizes and times) only keys the cache: a changed file is read
  again. The Series are shared between callers, who do not change them."""
  (train_file, train_text), (where, test_text) = _texts(data_dir, dataset)
  train, test = parse_ts(train_text, train_file), parse_ts(test_text, where)
  if test.classes != train.classes:
    raise ValueError(f"{where}: @classLabel lists {' '.join(test.classes)}, the training file "
                     f"{' '.join(train.classes)}")
  if test.values[0].shape[1] != train.values[0].shape[1]:
    raise ValueError(f"{where}: {test.values[0].shape[1]} channels, the training file "
                     f"{train.values[0].shape[1]}")
  return train, test


def standardise(values: list, reference: list) -> list:
  """Each [T_i, C] series of `values` standardised per channel with the mean and standard
  deviation of all the steps of `reference` (its valid steps: the series are unpadded)."""
  steps = np.concatenate(reference)
  mean, std = steps.mean(axis=0), steps.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return [(v - mean) / std for v in values]


def padded(values: list, num_steps: int):
  """(xs [N, num_steps, C] float32 zero-padded, lengths [N] int32) of [T_i, C] series."""
  xs = np.zeros((len(values), num_steps, values[0].shape[1]), np.float32)
  for i, v in enumerate(values):
    xs[i, :len(v)] = v
  return xs, np.asarray([len(v) for v in values], np.int32)


def validation_split(num_series: int):
  """(train indices, validation indices), both sorted: a fixed fifth of the training file."""
  num_validation = int(round(VALIDATION_FRACTION * num_series))
  if not 1 <= num_validation < num_series:
    raise ValueError(f"a validation fifth of {num_series} training series leaves none to train "
                     "on or none to evaluate")
  order = np.random.default_rng(SPLIT_SEED).permutation(num_series)
  return np.sort(order[:-num_validation]), np.sort(order[-num_validation:])


def make(dataset: str = None, data_dir: str = None, eval_split: str = "test"):
  check_choice(EVAL_SPLIT, eval_split)
  if data_dir is None:
    raise OptionError("data_dir", None, "required (the uea task needs a folder with "
                      "NAME_TRAIN.ts and NAME_TEST.ts, or the sktime wheel; nothing is downloaded)")
  if not os.path.isdir(data_dir):
    raise OptionError("data_dir", data_dir, "not a folder")
  if dataset is None:
    found = available(data_dir)
    raise OptionError("dataset", None, f"required (the uea task needs one); found in {data_dir}: "
                      f"{', '.join(found) if found else 'none'}")
  if not re.fullmatch(NAME_PATTERN, dataset):
    raise OptionError("dataset", dataset, "a dataset name: letters, digits, _ and -")
  train, test = load(data_dir, dataset)
  num_steps = max(len(v) for v in train.values + test.values)
  if eval_split == "validation":
    keep, held = validation_split(len(train.values))
    fit = [train.values[i] for i in keep]
    parts = (fit, train.labels[keep]), ([train.values[i] for i in held], train.labels[held])
  else:
    fit = train.values
    parts = (fit, train.labels), (test.values, test.labels)
  split = []
  for values, labels in parts:
    xs, lengths = padded(standardise(values, fit), num_steps)
    split.append((xs, labels, None if (lengths == num_steps).all() else lengths))
  return sequence_task("uea", *split, num_classes=len(train.classes))
