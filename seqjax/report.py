"""Summaries of finished runs: steps to a threshold (the RWA paper's rule) and final values."""

import json
import math
import os
import re

from seqjax import checkpoint
from seqjax.settings import RunError

# The paper's thresholds per task: (metric, "below" | "above", value)
THRESHOLDS = {
    "adding": ("mse", "below", 0.01),
    "copy": ("bits_per_step", "below", 0.1),
    # copy's rule: a memoryless model scores R·S·log2(7) / (R(2S + T)) = 10·log2(7) / (20 + T)
    # bits per step on multi_copy too (0.702 at its default T = 20), whatever R
    "multi_copy": ("bits_per_step", "below", 0.1),
    "seq_length": ("accuracy", "above", 0.99),
    "reber": ("accuracy", "above", 0.99),
    "binary_addition": ("sequence_accuracy", "above", 0.99),
}
ROLLING = 5  # the paper: the rolling mean of five test evaluations crosses the threshold


def threshold(task: str, seq_len: int):
  """(metric, direction, value) of the paper's rule for this task and length, or Nones.
  Copy (and multi_copy) at T = 1000 uses 0.01 bits/step: a memoryless model already gets 0.0275
  there."""
  if task in ("copy", "multi_copy") and seq_len >= 1000:
    return ("bits_per_step", "below", 0.01)
  return THRESHOLDS.get(task, (None, None, None))


def _rule(metric, direction, value):
  return f"{metric} {'<' if direction == 'below' else '>'} {value}"


def read_jsonl(path: str) -> list:
  """The rows of a JSON-lines file ([] if there is none); a bad line is named in a RunError."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          raise RunError(f"{path} line {n} is not JSON; move the file away to continue") from None
  return rows


def write_jsonl(path: str, rows) -> None:
  checkpoint.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise RunError(f"{path} is unreadable ({e}); move it away to continue") from None


def main_metric(task) -> str:
  """The metric a task's runs are judged by (plots, logs)."""
  if task.name in ("copy", "multi_copy"):
    return "bits_per_step"
  if task.name == "text":
    return "bits_per_char"
  return "accuracy" if task.classification else "mse"


def evaluations(rows):
  """The evaluation rows of metrics.jsonl (without a diverged run's `diverged_at_step` row)."""
  return [r for r in rows if "diverged_at_step" not in r]


def diverged_at(rows):
  return next((r["diverged_at_step"] for r in rows if "diverged_at_step" in r), None)


def read_run(workdir: str):
  """(config, evaluation rows, diverged_at_step or None) of a run's folder."""
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return read_json(os.path.join(workdir, "config.json")), evaluations(rows), diverged_at(rows)


def steps_to_threshold(rows, metric: str, direction: str, value: float):
  """The first evaluation step at which the rolling mean of the last ROLLING evaluations of
  eval_<metric> crosses `value`, or None if it never does. The evaluations are the paper's,
  those after training steps: the untrained model's (step 0) is not one of them."""
  rows = [r for r in rows if r["step"] > 0]
  series = [r[f"eval_{metric}"] for r in rows]
  for i in range(len(series)):
    window = series[max(0, i - ROLLING + 1):i + 1]
    mean = sum(window) / len(window)
    if len(window) == ROLLING and (mean < value if direction == "below" else mean > value):
      return rows[i]["step"]
  return None


def _evaluated_every(configs) -> str:
  """The resolution of steps to a threshold: the runs' evaluation interval(s)."""
  every = sorted({c["eval_every"] for c in configs if c.get("eval_every")})
  return f"; evaluated every {' or '.join(map(str, every))} steps" if every else ""


def task_label(config) -> str:
  """The task column: the task and the settings that change its data (only those recorded)."""
  notes = [config.get("dataset"),
           config["bit_order"] if config["task"] == "binary_addition" else None,
           config.get("corpus_kind"),
           f"R={config['num_segments']}" if "num_segments" in config else None,
           f"data_rules={config['data_rules']}" if config.get("data_rules", "paper") != "paper"
           else None,
           "validation split" if config.get("eval_split") == "validation" else None]
  return config["task"] + "".join(f" ({n})" for n in notes if n)


def summary_table(workdirs, metrics=None) -> str:
  """A markdown table: one row per run with its settings, steps to threshold (a multiple of the
  evaluation interval, which the header states) and final values."""
  runs = [read_run(w) for w in workdirs]
  every = _evaluated_every([c for c, _, _ in runs])
  rules = [threshold(c["task"], c["seq_len"]) for c, _, _ in runs]
  shared = len(set(rules)) == 1  # one rule for every row: name it in the header
  lines = []
  for workdir, (config, rows, diverged), (metric, direction, value) in zip(workdirs, runs, rules):
    default = metric or next((m for m in ("bits_per_char", "accuracy", "mse")
                              if rows and f"eval_{m}" in rows[-1]), None)
    shown = metrics or ([default] if default else [])
    if not lines:
      header = ["run", "model", "task", "T", "H", "steps"]
      if any(r[0] for r in rules):
        header += [(f"steps to {_rule(metric, direction, value)}" if shared else
                    "steps to threshold") + (f" ({every[2:]})" if every else "")]
      header += ([f"final {m}" for m in shown] if shared or metrics else ["final value"])
      header += ["wall time"]
      lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    last = rows[-1] if rows else {}
    name = run_names(workdirs)[workdir]
    cells = [name + (f" (diverged at step {diverged})" if diverged else ""), model_label(config),
             task_label(config),
             str(config["seq_len"]), str(config["hidden_size"]), str(last.get("step", 0))]
    if metric:
      reached = steps_to_threshold(rows, metric, direction, value)
      cell = str(reached) if reached is not None else f"not within {last.get('step', 0)}"
      cells.append(cell if shared else f"{cell} ({_rule(metric, direction, value)})")
    elif any(r[0] for r in rules):
      cells.append("—")
    cells += [_fmt(last.get(f"eval_{m}", math.nan)) for m in shown]
    cells.append(f"{last.get('wall_time', math.nan) / 60:.1f} min")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _fmt(v):
  return f"{v:.4g}"


def model_label(config) -> str:
  """The model column: cell, layers and readout (e.g. "lstm x2 + attention")."""
  return (config["model"] + (f" x{config['num_layers']}" if config.get("num_layers", 1) > 1 else "")
          + (f" + {config['readout']}" if config.get("readout", "linear") != "linear" else ""))


def run_names(workdirs) -> dict:
  """A short unique name per run folder: its own name, or with its parent's where a group's
  subfolders (s0, s1, ...) would repeat."""
  parts = {w: os.path.normpath(w).split(os.sep) for w in workdirs}
  for depth in range(1, max((len(p) for p in parts.values()), default=1) + 1):
    names = {w: "/".join(p[-depth:]) for w, p in parts.items()}
    if len(set(names.values())) == len(names):
      return names
  return {w: w for w in workdirs}


def curves_by_configuration(workdirs) -> dict:
  """{label: [evaluation rows of each run]}: the seeds of one configuration (a group's s0, s1,
  ... or runs named <name>-s0, <name>-s1, ...) under one label, so a figure draws them as one
  band."""
  runs = []
  for w in workdirs:
    parent, name = os.path.split(os.path.normpath(w))
    if re.fullmatch(r"(lr[^/]*-)?s\d+", name):  # a group's run folder: the group names it
      name = os.path.basename(parent) + re.sub(r"-?s\d+$", "", "/" + name).rstrip("/")
    config, rows, _ = read_run(w)
    runs.append((re.sub(r"-s\d+$", "", name), model_label(config), rows))
  # Folders alike in name can hold different models (two groups both called "rwa", one with
  # an attention readout): those are told apart by the model, never pooled into one band.
  models = {}
  for name, model, _ in runs:
    models.setdefault(name, set()).add(model)
  curves = {}
  for name, model, rows in runs:
    curves.setdefault(name if len(models[name]) == 1 else f"{name} ({model})", []).append(rows)
  return curves


def mean_sd(values):
  """(mean, sample standard deviation (n - 1 in the denominator), or None for one value): the
  spread over seeds in every table."""
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _mean_pm_sd(values, digits: str, sd_digits: str) -> str:
  mean, sd = mean_sd(values)
  return f"{mean:{digits}}" + (f" ± {sd:{sd_digits}}" if sd is not None else "")


def _steps_over_seeds(reached, budget):
  """Steps to threshold over seeds: mean ± sd where every seed crossed, else how many did."""
  crossed = [r for r in reached if r is not None]
  if not crossed:
    return f"not within {budget}"
  text = _mean_pm_sd(crossed, ".0f", ".0f")
  return text if len(crossed) == len(reached) else (
      f"{text} ({len(crossed)} of {len(reached)}; the others not within {budget})")


# seed_table's own columns; any other recorded setting that differs between groups gets one too
# (num_segments, data_rules, eval_split, corpus_kind: in the task column)
_SEED_TABLE_SHOWN = ("model", "num_layers", "readout", "task", "bit_order", "seq_len",
                     "hidden_size", "feedback", "seed", "workdir", "wall_time", "num_segments",
                     "data_rules", "eval_split", "corpus_kind")
# What config.json records about how a run was launched, not what it computes (versions,
# commit, command line, the writers it fed): runs alike but for these are seeds of one
# configuration (seqjax.workdir.provenance writes the first four).
NOT_THE_EXPERIMENT = ("seqjax_version", "jax_version", "git_commit", "argv", "tensorboard")


def seed_table(workdirs, metrics) -> str:
  """Runs that differ only in --seed, averaged: steps to the task's threshold and the final
  eval_<metric>s as mean ± sample sd over seeds (n - 1). Settings that tell the groups apart
  beyond the fixed columns (e.g. learning_rate) get a column each."""
  groups = {}
  for workdir in workdirs:
    config, rows, _ = read_run(workdir)
    key = json.dumps({k: v for k, v in config.items()
                      if k not in ("seed", "workdir", "wall_time") + NOT_THE_EXPERIMENT},
                     sort_keys=True)
    groups.setdefault(key, (config, []))[1].append(rows)
  configs = [c for c, _ in groups.values()]
  varying = sorted(k for k in set().union(*configs) - set(_SEED_TABLE_SHOWN + NOT_THE_EXPERIMENT)
                   if len({json.dumps(c.get(k)) for c in configs}) > 1)
  rules = {threshold(c["task"], c["seq_len"]) for c in configs}
  rule = rules.pop() if len(rules) == 1 else (None, None, None)  # one rule for every row
  series = any("feedback" in c for c in configs)  # only the series tasks record --feedback
  header = ["model", "task", "T", "H", *(["feedback"] if series else []), *varying, "seeds"]
  if rule[0]:
    header.append(f"steps to {_rule(*rule)} (mean ± sample sd over seeds"
                  f"{_evaluated_every(configs)})")
  header += [f"final {m} (mean ± sample sd over seeds)" for m in metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for config, runs in groups.values():
    finals = [rows[-1] if rows else {} for rows in runs]
    cells = [model_label(config), task_label(config), str(config["seq_len"]), str(config["hidden_size"]),
             *([config.get("feedback", "—")] if series else []),
             *[_setting(config.get(k, "—")) for k in varying], str(len(finals))]
    if rule[0]:
      budget = max(f.get("step", 0) for f in finals)
      cells.append(_steps_over_seeds([steps_to_threshold(rows, *rule) for rows in runs], budget))
    cells += [_mean_pm_sd([f.get(f"eval_{m}", math.nan) for f in finals], ".3g", ".2g")
              for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _setting(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)
