"""Steps-to-threshold (the paper's rolling-mean rule) and the summary table."""

import json
import subprocess
import sys
import os

from seqjax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(values):
  return [{"step": 100 * (i + 1), "eval_mse": v, "wall_time": 6.0 * (i + 1)}
          for i, v in enumerate(values)]


def test_rolling_mean_of_five_must_cross():
  # a single good evaluation is not enough; five whose mean is below are
  rows = _rows([0.2, 0.005, 0.2, 0.2, 0.2, 0.009, 0.009, 0.009, 0.009, 0.009, 0.009])
  assert report.steps_to_threshold(rows, "mse", "below", 0.01) == 1000
  assert report.steps_to_threshold(rows[:9], "mse", "below", 0.01) is None
  acc = [{"step": s, "eval_accuracy": a} for s, a in [(1, .995)] * 4 + [(5, .995)]]
  assert report.steps_to_threshold(acc, "accuracy", "above", 0.99) == 5


def test_summary_table_from_workdirs(tmp_path):
  for name, values in [("fast", [0.1] + [0.001] * 5), ("slow", [0.1] * 6)]:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(
        {"model": "rwa", "task": "adding", "seq_len": 100, "hidden_size": 250, "num_layers": 1}))
    (tmp_path / name / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _rows(values)))
  table = report.summary_table([tmp_path / "fast", tmp_path / "slow"]).splitlines()
  assert table[0].startswith("| run | model | task | T | H | steps | steps to mse < 0.01 |")
  assert "| fast | rwa | adding | 100 | 250 | 600 | 600 | 0.001 | 0.6 min |" == table[2]
  assert "| not within 600 |" in table[3]
  out = subprocess.run([sys.executable, "-m", "launch.summarize", str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode != 0 and "no metrics.jsonl" in out.stderr and "Traceback" not in out.stderr


def test_mixed_tasks_name_each_rule_and_long_copy_uses_the_papers_tighter_one(tmp_path):
  for name, task, T, metric, values in [
      ("add", "adding", 1000, "mse", [0.1] + [0.005] * 5),
      ("copy100", "copy", 100, "bits_per_step", [0.05] * 5),
      ("copy1000", "copy", 1000, "bits_per_step", [0.05] * 5)]:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(
        {"model": "rwa", "task": task, "seq_len": T, "hidden_size": 8, "num_layers": 1}))
    (tmp_path / name / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 100 * (i + 1), f"eval_{metric}": v, "wall_time": 6.0}) + "\n"
        for i, v in enumerate(values)))
  table = report.summary_table([tmp_path / n for n in ("add", "copy100", "copy1000")]).splitlines()
  assert "| steps to threshold | final value |" in table[0]
  assert "| 600 (mse < 0.01) | 0.005 |" in table[2]
  assert "| 500 (bits_per_step < 0.1) | 0.05 |" in table[3]
  assert "| not within 500 (bits_per_step < 0.01) | 0.05 |" in table[4]


def test_seed_table_averages_runs_that_differ_only_in_the_seed(tmp_path):
  for name, seed, feedback, mse in [("a0", 0, "free", 1.0), ("a1", 1, "free", 3.0),
                                    ("b0", 0, "teacher", 5.0)]:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(
        {"model": "lstm", "task": "decay", "seq_len": 50, "hidden_size": 64, "num_layers": 1,
         "feedback": feedback, "seed": seed, "workdir": str(tmp_path / name)}))
    (tmp_path / name / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval_mse": mse}) + "\n")
  table = report.seed_table([tmp_path / n for n in ("a0", "a1", "b0")], ["mse"]).splitlines()
  assert len(table) == 4
  assert table[0].endswith("| final mse (mean ± sample sd over seeds) |")
  assert table[2] == "| lstm | decay | 50 | 64 | free | 2 | 2 ± 1.4 |"  # sqrt(2): n - 1 = 1
  assert table[3] == "| lstm | decay | 50 | 64 | teacher | 1 | 5 |"  # one seed: no spread


def test_seed_table_pools_seeds_launched_apart_whatever_their_provenance(tmp_path):
  # `--seed=0` and `--seed=1` launched as two commands (their argv differ, one with
  # --tensorboard, another commit): one configuration, two seeds
  from seqjax.workdir import provenance
  assert set(provenance(["x"])) <= set(report.NOT_THE_EXPERIMENT)
  for seed, mse, commit, tb in [(0, 1.0, "abc", False), (1, 3.0, "def", True)]:
    d = tmp_path / f"s{seed}"
    d.mkdir()
    config = {"model": "rwa", "task": "adding", "seq_len": 6, "hidden_size": 8, "num_layers": 1,
              "seed": seed, "workdir": str(d), "tensorboard": tb,
              **provenance(["launch/main.py", f"--seed={seed}", f"--workdir={d}"])}
    (d / "config.json").write_text(json.dumps(dict(config, git_commit=commit)))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval_mse": mse}) + "\n")
  table = report.seed_table([tmp_path / "s0", tmp_path / "s1"], ["mse"]).splitlines()
  assert table[0].startswith("| model | task | T | H | seeds |")
  assert table[2:] == ["| rwa | adding | 6 | 8 | 2 | not within 10 | 2 ± 1.4 |"]


def test_the_task_column_names_the_settings_that_change_the_data(tmp_path):
  # multi_copy's R, --data_rules=authors and --eval_split=validation, as the launcher records
  # them (only where they apply); two seq_length runs alike but for their rules stay apart
  runs = [("mc", {"task": "multi_copy", "num_segments": 2}, 3.0),
          ("sl_paper", {"task": "seq_length", "data_rules": "paper"}, 0.5),
          ("sl_authors", {"task": "seq_length", "data_rules": "authors"}, 0.75),
          ("dv", {"task": "digits", "eval_split": "validation", "permute": True}, 0.25)]
  for name, config, value in runs:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(dict(
        config, model="rwa", seq_len=10, hidden_size=8, num_layers=1, seed=0)))
    metric = "bits_per_step" if name == "mc" else "accuracy"
    (tmp_path / name / "metrics.jsonl").write_text(
        json.dumps({"step": 10, f"eval_{metric}": value}) + "\n")
  table = report.summary_table([tmp_path / n for n, _, _ in runs]).splitlines()
  assert [row.split(" | ")[2] for row in table[2:]] == [
      "multi_copy (R=2)", "seq_length", "seq_length (data_rules=authors)",
      "digits (validation split)"]
  table = report.seed_table([tmp_path / n for n in ("sl_paper", "sl_authors")],
                            ["accuracy"]).splitlines()
  assert table[0].startswith("| model | task | T | H | seeds |")  # no data_rules column
  assert table[2:] == ["| rwa | seq_length | 10 | 8 | 1 | not within 10 | 0.5 |",
                       "| rwa | seq_length (data_rules=authors) | 10 | 8 | 1 | not within 10 | 0.75 |"]


def test_seed_table_tells_groups_apart_by_learning_rate_and_bit_order(tmp_path):
  # the subfolders of `--learning_rates=0.003,0.01 --seeds=0,1 --bit_order=msb_first`, and one
  # lsb_first group
  base = {"model": "lstm", "task": "binary_addition", "seq_len": 8, "hidden_size": 16,
          "num_layers": 1, "clip_norm": 0.0}
  runs = []
  for order, lr, seed, acc in [("msb_first", 0.003, 0, 0.5), ("msb_first", 0.003, 1, 0.7),
                               ("msb_first", 0.01, 0, 0.9), ("msb_first", 0.01, 1, 0.9),
                               ("lsb_first", 0.003, 0, 1.0)]:
    d = tmp_path / order / f"lr{lr:g}-s{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(dict(base, bit_order=order, learning_rate=lr,
                                                   seed=seed, workdir=str(d))))
    (d / "metrics.jsonl").write_text(json.dumps(
        {"step": 10, "eval_accuracy": acc, "eval_sequence_accuracy": acc}) + "\n")
    runs.append(d)
  table = report.seed_table(runs, ["accuracy"]).splitlines()
  assert table[0].startswith("| model | task | T | H | learning_rate | seeds |")
  assert table[2:] == [
      "| lstm | binary_addition (msb_first) | 8 | 16 | 0.003 | 2 | not within 10 "
      "| 0.6 ± 0.14 |",
      "| lstm | binary_addition (msb_first) | 8 | 16 | 0.01 | 2 | not within 10 "
      "| 0.9 ± 0 |",
      "| lstm | binary_addition (lsb_first) | 8 | 16 | 0.003 | 1 | not within 10 "
      "| 1 |"]


def _group(root, label, config, mse_by_seed):
  """A group's subfolders <root>/<label>/s<seed>, one evaluation per 100 steps."""
  for seed, series in mse_by_seed.items():
    d = root / label / f"s{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(dict(config, seed=seed, workdir=str(d))))
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 100 * (i + 1), "eval_mse": v, "wall_time": 6.0}) + "\n"
        for i, v in enumerate(series)))
  return [root / label / f"s{seed}" for seed in mse_by_seed]


def test_tables_over_seeds_name_each_run_and_average_the_steps_to_threshold(tmp_path):
  base = {"task": "adding", "seq_len": 100, "hidden_size": 8, "num_layers": 1}
  fast = [0.1] * 2 + [0.001] * 8      # rolling mean of 5 below 0.01 first at step 700
  slow = [0.1] * 4 + [0.001] * 6      # ... at step 900
  never = [0.1] * 10
  linear = _group(tmp_path, "lstm", dict(base, model="lstm"), {0: fast, 1: slow})
  attn = _group(tmp_path, "lstm-attention", dict(base, model="lstm", readout="attention"),
                {0: fast, 1: never})
  rows = report.summary_table(linear + attn).splitlines()
  assert [r.split(" | ")[0] for r in rows[2:]] == ["| lstm/s0", "| lstm/s1", "| lstm-attention/s0",
                                                   "| lstm-attention/s1"]
  assert rows[4].split(" | ")[1] == "lstm + attention"
  table = report.seed_table(linear + attn, ["mse"]).splitlines()
  assert "steps to mse < 0.01 (mean ± sample sd over seeds) |" in table[0]
  assert table[2] == "| lstm | adding | 100 | 8 | 2 | 800 ± 141 | 0.001 ± 0 |"
  assert table[3] == ("| lstm + attention | adding | 100 | 8 | 2 | 700 (1 of 2; the "
                      "others not within 1000) | 0.0505 ± 0.07 |")


def test_spreads_are_the_sample_sd_and_steps_state_the_evaluation_interval(tmp_path):
  values = [0.2, 0.5, 1.4]
  mean = (0.2 + 0.5 + 1.4) / 3
  by_hand = ((0.2 - mean) ** 2 + (0.5 - mean) ** 2 + (1.4 - mean) ** 2) / (3 - 1)
  got_mean, got_sd = report.mean_sd(values)
  assert abs(got_mean - 0.7) < 1e-12 and abs(got_sd - by_hand ** 0.5) < 1e-12
  assert abs(got_sd - 0.6245) < 1e-4  # (the population sd would be 0.5099)
  assert report.mean_sd([3.0]) == (3.0, None)
  base = {"task": "adding", "seq_len": 100, "hidden_size": 8, "num_layers": 1, "model": "rwa",
          "eval_every": 100}
  runs = _group(tmp_path, "rwa", base, {s: [0.1] * 9 + [v] for s, v in enumerate(values)})
  table = report.seed_table(runs, ["mse"]).splitlines()
  assert "steps to mse < 0.01 (mean ± sample sd over seeds; evaluated every 100 steps) |" in table[0]
  assert table[2].endswith("| 0.7 ± 0.62 |")
  rows = report.summary_table(runs).splitlines()
  assert "| steps to mse < 0.01 (evaluated every 100 steps) |" in rows[0]


def test_tasks_without_a_threshold_show_their_main_metric(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "config.json").write_text(json.dumps(
      {"model": "rwa", "task": "digits", "seq_len": 64, "hidden_size": 128, "num_layers": 1}))
  (tmp_path / "d" / "metrics.jsonl").write_text(json.dumps(
      {"step": 5, "eval_accuracy": 0.75, "eval_loss": 0.5, "wall_time": 60.0}) + "\n")
  table = report.summary_table([tmp_path / "d"]).splitlines()
  assert table[0] == "| run | model | task | T | H | steps | final accuracy | wall time |"
  assert table[2] == "| d | rwa | digits | 64 | 128 | 5 | 0.75 | 1.0 min |"


def test_a_bad_metrics_line_is_named_in_one_line(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"model": "rwa", "task": "adding", "seq_len": 10, "hidden_size": 8, "num_layers": 1}))
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "eval_mse": 0.5}\nnot json\n')
  out = subprocess.run([sys.executable, "-m", "launch.summarize", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'metrics.jsonl'} line 2 is not JSON; move the file away to continue")


def test_curves_by_configuration_bands_each_configurations_seeds(tmp_path):
  base = {"task": "adding", "seq_len": 100, "hidden_size": 8, "num_layers": 1}
  groups = _group(tmp_path, "min_rwa", dict(base, model="min_rwa"), {0: [0.1], 1: [0.2]})
  groups += _group(tmp_path, "rwa", dict(base, model="rwa"), {0: [0.3], 2: [0.4]})
  solo = tmp_path / "adding-lstm-s0"
  solo.mkdir()
  (solo / "config.json").write_text(json.dumps(dict(base, model="lstm", seed=0)))
  (solo / "metrics.jsonl").write_text(json.dumps({"step": 100, "eval_mse": 0.5}) + "\n")
  curves = report.curves_by_configuration(groups + [solo])
  assert {k: [[r["eval_mse"] for r in rows] for rows in v] for k, v in curves.items()} == {
      "min_rwa": [[0.1], [0.2]], "rwa": [[0.3], [0.4]], "adding-lstm": [[0.5]]}


def test_curves_by_configuration_never_pools_alike_named_groups_of_different_models(tmp_path):
  base = {"task": "copy", "seq_len": 100, "hidden_size": 8, "num_layers": 1, "model": "rwa"}
  runs = _group(tmp_path / "a", "rwa", dict(base, readout="linear"), {0: [0.1], 1: [0.2]})
  runs += _group(tmp_path / "b", "rwa", dict(base, readout="attention"), {0: [0.3]})
  curves = report.curves_by_configuration(runs)
  assert {k: [[r["eval_mse"] for r in rows] for rows in v] for k, v in curves.items()} == {
      "rwa (rwa)": [[0.1], [0.2]], "rwa (rwa + attention)": [[0.3]]}
