"""Looking inside trained runs (what `launch.inspect` draws).

Array functions: which units move most at given steps (`rank_units`), the RWA's share of each
step in its average (`step_shares`); the attention readout's weights at the last step are
`models.last_step_attention`.
Then per task the steps worth looking at (`landmarks`, `event_steps`) and `inspect_runs`, which
loads run folders and writes their pictures.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax import checkpoint, experiment, models, plots, report, train
from seqjax.cells.base import Cell
from seqjax.settings import DATA_SETTINGS
from seqjax.tasks import variable_copy


def unit_movement(hs_NxTxH, steps) -> np.ndarray:
  """[H] mean |h_t − h_{t−1}| per unit over the given steps of every sequence.

  steps: one list of time steps per sequence (None: every step). Step 0 has no previous output to
  compare with and is skipped, as are steps outside [1, T).
  """
  hs = np.asarray(hs_NxTxH, np.float64)
  jumps = np.abs(np.diff(hs, axis=1))                  # [N, T-1, H]: jumps[:, t-1] is Δh_t
  T = hs.shape[1]
  picked = []
  for n, seq_steps in enumerate(steps):
    ts = range(1, T) if seq_steps is None else [int(t) for t in seq_steps if 1 <= int(t) < T]
    picked.extend(jumps[n, t - 1] for t in ts)
  if not picked:   # no usable step at all: rank by movement over the whole sequences
    return jumps.reshape(-1, hs.shape[2]).mean(axis=0)
  return np.mean(picked, axis=0)


def rank_units(hs_NxTxH, steps) -> np.ndarray:
  """Unit indices [H], the units that move most at `steps` first (see `unit_movement`); ties keep
  the lower index first."""
  return np.argsort(-unit_movement(hs_NxTxH, steps), kind="stable")


def has_weighted_average(state) -> bool:
  """Whether a cell state is a running weighted average (the RWA family: fields n, d, m)."""
  return all(hasattr(state, f) for f in ("n", "d", "m"))


def step_shares(cell: Cell, params, xs_BxTxF, lengths=None) -> jax.Array:
  """RWA attention: [B, T, H] share of step t in each unit's average n/d at the last valid step.

  share[b, t] = e^{a_t − m_L} / d_L with L = lengths[b] (T if None), the running max m and the
  scaled denominator d read from the cell's state after L steps, and 0 for t ≥ L; over t < L the
  shares of a unit sum to 1. a_t is read from the cell itself: one `cell.step` from the state
  before step t with its average emptied (n = d = 0, m = the lowest float) leaves m = a_t.
  For cells whose state has fields n, d, m (rwa, and any cell built the same way).
  """
  B, T = xs_BxTxF.shape[:2]
  state0 = cell.initial_state(params, (B,))
  if not has_weighted_average(state0):
    raise ValueError(f"cell {cell.name!r} keeps no weighted average (its state has no n, d, m)")
  empty = dict(n=jnp.zeros_like(state0.n), d=jnp.zeros_like(state0.d),
               m=jnp.full_like(state0.m, jnp.finfo(state0.m.dtype).min))

  def body(state, x_t):
    a_t = cell.step(params, state._replace(**empty), x_t)[0].m
    state, _ = cell.step(params, state, x_t)
    return state, (a_t, state.m, state.d)

  _, (a, m, d) = jax.lax.scan(body, state0, jnp.swapaxes(xs_BxTxF, 0, 1))   # each [T, B, H]
  a, m, d = (jnp.swapaxes(v, 0, 1) for v in (a, m, d))                      # [B, T, H]
  L = jnp.full((B,), T, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
  last = jnp.clip(L - 1, 0, T - 1)[:, None, None]
  m_L = jnp.take_along_axis(m, last, axis=1)
  d_L = jnp.take_along_axis(d, last, axis=1)
  valid = (jnp.arange(T)[None, :] < L[:, None])[..., None]
  # a_t ≤ m_L for every valid t, so the exponent is ≤ 0: nothing overflows
  return jnp.where(valid, jnp.exp(jnp.where(valid, a - m_L, 0.0)) / d_L, 0.0)


def _copy_segments(batch, b):
  """[(first step, delimiter step)] of each copy problem in sequence b (multi_copy: R of them
  back to back, one delimiter each, all of the same length)."""
  delimiters = np.nonzero(np.asarray(batch.xs[b, :, variable_copy.DELIMITER]))[0]
  length = batch.xs.shape[1] // len(delimiters)
  return [(k * length, int(p)) for k, p in enumerate(delimiters)]


def landmarks(task_name, batch, b):
  """[(time step, label)] worth drawing on sequence b's state picture."""
  if task_name == "adding":
    return [(int(t), "marker") for t in np.nonzero(np.asarray(batch.xs[b, :, 1]))[0]]
  if task_name in ("copy", "multi_copy"):
    S = variable_copy.NUM_RECALL
    return [mark for start, p in _copy_segments(batch, b) for mark in
            ((start + S - 0.5, "symbols shown"), (p, "delimiter"), (p + S + 0.5, "recalled"))]
  if batch.lengths is not None:
    return [(int(batch.lengths[b]) - 0.5, "end")]
  return []



def event_steps(task_name, batch, b):
  """The steps of sequence b where the units worth seeing should move (None: every step)."""
  if task_name == "adding":
    return [int(t) for t in np.nonzero(np.asarray(batch.xs[b, :, 1]))[0]]
  if task_name in ("copy", "multi_copy"):
    return [t for start, p in _copy_segments(batch, b)
            for t in list(range(start, start + variable_copy.NUM_RECALL)) + [p]]
  return None



def describe(cell, params, task, few, top_units):
  """What the states picture shows of one run on the sequences `few`: a dict with the run's
  hidden states hs [N, T, H], its unit ranking, and the strip under each heatmap [N, T]."""
  _, hs = seqjax.scan(cell, params["cell"], few.xs, lengths=few.lengths)
  hs = np.asarray(hs)
  n = hs.shape[0]
  units = rank_units(hs, [event_steps(task.name, few, b) for b in range(n)])
  shown = units[:top_units]
  readout = params.get("readout", {})
  if "W_q" in readout:
    strip = np.asarray(models.last_step_attention(params, jnp.asarray(hs), few.lengths))
    strip_label = "attention readout:\nweight of step i\nat the last step"
  elif has_weighted_average(cell.initial_state(params["cell"], ())):
    shares = step_shares(cell, params["cell"], few.xs, few.lengths)
    strip = np.asarray(shares)[:, :, shown].mean(axis=-1)
    strip_label = "share of step t\nin n/d at the end\n(shown units)"
  else:
    jumps = np.abs(np.diff(hs[:, :, shown], axis=1, prepend=hs[:, :1, shown]))
    strip = jumps.mean(axis=-1)
    strip_label = "mean |Δh|\n(shown units)"
  return dict(hs=hs, units=units, shown=shown, strip=strip, strip_label=strip_label)



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



def task_pictures(workdir, cfg, tcfg, params, held, few):
  """The task's own pictures of one run, in its folder; returns the paths written."""
  task, cell = tcfg.task, tcfg.cell
  written = []
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
    free = models.closed_loop(cell, params, few.xs, tcfg.prefix_len, task.feedback_channel)[..., 0]
    plots.series_predictions(np.asarray(few.ys), np.asarray(teacher), np.asarray(free),
                             tcfg.prefix_len, os.path.join(workdir, "series.png"),
                             f"{cell.name} on {task.name}: next-value predictions")
    written.append("series.png")
  return [os.path.join(workdir, w) for w in written]



def inspect_runs(workdirs, output=None, num_examples=4, top_units=16, which="last"):
  """Draws the pictures of the runs in `workdirs`; returns ({workdir: describe(...)}, paths
  written). The held-out sequences are the first run's, so all runs are drawn on the same ones.
  Raises RunError (or CheckpointError) with one line for an unusable workdir. which: "last"
  (checkpoint.msgpack) or "best" (checkpoint_best.msgpack)."""
  loaded = [(w, *experiment.load(w, which)) for w in workdirs]
  first_cfg, first_tcfg = loaded[0][1], loaded[0][2]
  task = first_tcfg.task
  if task.stream is not None:
    raise experiment.RunError(f"--workdir={workdirs[0]}: a {task.name} run is one long stream, "
                              "not held-out sequences to draw; launch.sample writes text from it")
  for w, cfg, tcfg, _ in loaded[1:]:
    first, this = first_cfg.recorded(), cfg.recorded()
    for key in DATA_SETTINGS:  # drawn on the first run's sequences: they must be this run's too
      if this.get(key) != first.get(key):
        raise experiment.RunError(
            f"--workdirs: {w} was trained with --{key}={this.get(key)}, {workdirs[0]} with "
            f"--{key}={first.get(key)}: only runs trained on the same data can be drawn side "
            "by side")
  held = task.held_out(train.eval_key(first_cfg.seed), task.held_out_size or first_cfg.eval_size)
  n = min(num_examples, held.xs.shape[0])
  few = jax.tree.map(lambda v: v[:n], held)
  marks = [landmarks(task.name, few, b) for b in range(n)]
  described, runs, written = {}, [], []
  for w, cfg, tcfg, params in loaded:
    described[w] = describe(tcfg.cell, params, task, few, top_units)
    readout = " + attention" if "W_q" in params.get("readout", {}) else ""
    runs.append((f"{tcfg.cell.name}{readout} ({os.path.basename(os.path.normpath(w))})",
                 described[w]))
    # the run's own pictures use its own held-out data (its seed), as a single run would
    own_held = tcfg.task.held_out(train.eval_key(cfg.seed), task.held_out_size or cfg.eval_size)
    written += task_pictures(w, cfg, tcfg, params, own_held,
                             jax.tree.map(lambda v: v[:n], own_held))
  if output is None:
    output = os.path.join(workdirs[0], "states.png" if len(workdirs) == 1
                          else "states_side_by_side.png")
  names = " vs ".join(report.model_label(dataclasses.asdict(cfg)) for _, cfg, _, _ in loaded)
  plots.hidden_states(runs, marks, output, f"{names}: hidden state on {task.name} (T={task.seq_len}), "
              f"the {min(top_units, runs[0][1]['hs'].shape[2])} units moving most")
  return described, [output] + written
