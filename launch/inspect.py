"""Look inside a trained run: `python -m launch.inspect --workdir=runs/...`.

Writes into the workdir:
- states.png: the hidden state over time (time x unit) for a few held-out sequences, with the
  task's landmarks drawn on it (adding: the two markers; copy: the delimiter; variable-length
  tasks: the sequence's end);
- seq_length: accuracy_by_length.png and accuracy_by_length.md (accuracy against the true length;
  the task is hardest near T/2);
- series tasks: series.png (true vs teacher-forced vs free-running predictions).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import seqjax
from seqjax import checkpoint, experiment, models, plots, train
from seqjax.settings import check_int
from seqjax.tasks import copy as copy_task

WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's folder.", required=True)
NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 4, "Sequences to draw.")


def landmarks(task_name, batch, b):
  """[(time step, label)] worth drawing on sequence b's state picture."""
  if task_name == "adding":
    return [(int(t), "marker") for t in np.nonzero(np.asarray(batch.xs[b, :, 1]))[0]]
  if task_name == "copy":
    p = int(np.argmax(np.asarray(batch.xs[b, :, copy_task.DELIMITER])))
    return [(copy_task.NUM_RECALL - 0.5, "symbols shown"), (p, "delimiter"),
            (p + copy_task.NUM_RECALL + 0.5, "recalled")]
  if batch.lengths is not None:
    return [(int(batch.lengths[b]) - 0.5, "end")]
  return []


def length_table(lengths, correct, T, bins=10):
  edges = np.linspace(0, T + 1, bins + 1)
  rows, centers, accs, counts = ["| lengths | examples | accuracy |", "|---|---|---|"], [], [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    inside = (lengths >= lo) & (lengths < hi)
    if inside.any():
      centers.append((lo + hi - 1) / 2)
      accs.append(float(correct[inside].mean()))
      counts.append(int(inside.sum()))
      rows.append(f"| {int(np.ceil(lo))}–{int(np.ceil(hi)) - 1} | {counts[-1]} | {accs[-1]:.3f} |")
  return "\n".join(rows), centers, accs, counts


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  workdir = WORKDIR.value
  try:
    check_int("num_examples", NUM_EXAMPLES.value)
    cfg, tcfg, params = experiment.load(workdir)
  except (experiment.RunError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")
  task, cell = tcfg.task, tcfg.cell
  held = task.held_out(train.eval_key(cfg.seed), task.held_out_size or cfg.eval_size)
  n = min(NUM_EXAMPLES.value, held.xs.shape[0])
  few = jax.tree.map(lambda v: v[:n], held)
  _, hs = seqjax.scan(cell, params["cell"], few.xs, lengths=few.lengths)
  marks = [landmarks(task.name, few, b) for b in range(n)]
  plots.state_heatmaps(np.asarray(hs), marks, os.path.join(workdir, "states.png"),
                       f"{cell.name} hidden state on {task.name} (T={task.seq_len})")
  written = ["states.png"]

  if task.name == "seq_length":
    logits = jax.jit(lambda p, b: train.outputs(tcfg, p, b))(params, held)
    correct = np.asarray(jnp.argmax(logits, -1) == held.ys)
    table, centers, accs, counts = length_table(np.asarray(held.lengths), correct, task.seq_len)
    plots.accuracy_by_length(centers, accs, counts, task.seq_len / 2,
                             os.path.join(workdir, "accuracy_by_length.png"),
                             f"{cell.name}: accuracy by length (T={task.seq_len})")
    checkpoint.write_atomic(os.path.join(workdir, "accuracy_by_length.md"), table + "\n")
    print(table)
    written += ["accuracy_by_length.png", "accuracy_by_length.md"]

  if task.feedback_channel is not None:
    teacher = train.outputs(tcfg, params, few)[..., 0]
    free = models.closed_loop(cell, params, few.xs, cfg.prefix_len, task.feedback_channel)[..., 0]
    plots.series_predictions(np.asarray(few.ys), np.asarray(teacher), np.asarray(free),
                             cfg.prefix_len, os.path.join(workdir, "series.png"),
                             f"{cell.name} on {task.name}: next-value predictions")
    written.append("series.png")
  print(f"wrote {', '.join(os.path.join(workdir, w) for w in written)}")


if __name__ == "__main__":
  app.run(main)
