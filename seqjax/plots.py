"""Learning-curve pictures (matplotlib, headless)."""

import io
import math

from seqjax.checkpoint import write_atomic


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, plt, path):
  """The one way pictures are written: PNG bytes, then an atomic replace."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  write_atomic(path, buf.getvalue())


def learning_curves(rows, path: str, title: str, metric: str) -> None:
  """rows: metrics.jsonl records. Left: train and eval loss (log scale); right: eval_<metric>
  (step 0, the untrained model, is an evaluation only)."""
  plt = _pyplot()
  steps = [r["step"] for r in rows]
  fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
  for key, label in [("train_loss", "train"), ("eval_loss", "eval")]:
    # the row of step 0 (the untrained model) has no train_loss
    ax_loss.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r],
                 label=label)
  if all(r.get(k, 1) > 0 for r in rows for k in ("train_loss", "eval_loss")):
    ax_loss.set_yscale("log")
  ax_loss.set(xlabel="training step", ylabel="loss", title="loss")
  ax_loss.legend()
  values = [r.get(f"eval_{metric}", math.nan) for r in rows]
  ax_metric.plot(steps, values, color="C2")
  ax_metric.set(xlabel="training step", ylabel=metric, title=f"eval {metric}")
  if metric.endswith("mse") and all(v > 0 for v in values):
    ax_metric.set_yscale("log")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, plt, path)


def compare_curves(groups, path: str, title: str, metric: str, threshold=None) -> None:
  """groups: {label: [rows of one seed, rows of another, ...]}. One line per label: the mean of
  eval_<metric> over seeds, with a band from the lowest to the highest seed; `threshold` (the
  paper's target for the metric) as a dotted line."""
  import numpy as np
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.2))
  positive = True
  for i, (label, runs) in enumerate(groups.items()):
    length = min(len(rows) for rows in runs)
    steps = [r["step"] for r in runs[0][:length]]
    values = np.array([[r.get(f"eval_{metric}", math.nan) for r in rows[:length]] for rows in runs])
    positive &= bool((values > 0).all())
    name = f"{label} ({len(runs)} seeds)" if len(runs) > 1 else label
    ax.plot(steps, values.mean(axis=0), color=f"C{i}", label=name)
    if len(runs) > 1:
      ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=f"C{i}", alpha=0.2)
  if threshold is not None:
    ax.axhline(threshold, color="0.4", ls=":", lw=1, label=f"threshold {threshold:g}")
  if positive and (metric.endswith("mse") or metric in ("loss", "bits_per_step")):
    ax.set_yscale("log")
  ax.set(xlabel="training step", ylabel=f"eval {metric}", title=title)
  ax.legend()
  fig.tight_layout()
  _save(fig, plt, path)


def hidden_states(runs, marks, path: str, title: str) -> None:
  """One column per run, two rows per sequence: a heatmap of the run's shown units over time
  (runs: [(name, dict(hs=[N, T, H], shown=unit indices, strip=[N, T], strip_label=str))]) and
  under it the run's strip (attention per step, or movement); marks[n] is a list of
  (time step, label) drawn as vertical lines on sequence n's panels (markers, delimiters, ends)."""
  import numpy as np
  plt = _pyplot()
  n = len(marks)
  fig, axes = plt.subplots(2 * n, len(runs), figsize=(5.5 * len(runs) + 1, 2.8 * n + 0.8),
                           squeeze=False, gridspec_kw=dict(height_ratios=[3, 1] * n),
                           sharex="col")
  for col, (name, run) in enumerate(runs):
    hs = np.asarray(run["hs"])[:, :, run["shown"]]
    scale = float(np.abs(hs).max()) or 1.0   # small states still show
    for b in range(n):
      ax, strip_ax = axes[2 * b, col], axes[2 * b + 1, col]
      image = ax.imshow(hs[b].T, aspect="auto", cmap="RdBu_r", vmin=-scale, vmax=scale,
                        interpolation="nearest")
      ax.set_yticks(range(len(run["shown"])), [str(u) for u in run["shown"]], fontsize=5)
      ax.tick_params(labelbottom=False)
      strip_ax.plot(run["strip"][b], color="C3", lw=1)
      strip_ax.set_xlim(-0.5, hs.shape[1] - 0.5)
      for t, label in marks[b]:
        for a in (ax, strip_ax):
          a.axvline(t, color="k", lw=1, ls="--")
        ax.text(t, -0.6, f" {label}", va="bottom", fontsize=7)
      if b == 0:
        ax.set_title(name, fontsize=9, pad=14)
      if col == 0:
        ax.set_ylabel("unit (top moving)", fontsize=8)
      strip_ax.set_ylabel(run["strip_label"], fontsize=6)
      strip_ax.tick_params(labelsize=6)
    axes[-1, col].set_xlabel("time step")
    # the colorbar takes its room from the whole column, so heatmaps and strips stay aligned
    fig.colorbar(image, ax=axes[:, col].tolist(), fraction=0.03, label="h")
  fig.suptitle(title)
  _save(fig, plt, path)


def accuracy_by_length(centers, accuracies, counts, boundary, path: str, title: str) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.8))
  ax.plot(centers, accuracies, "o-")
  ax.axvline(boundary, color="k", ls="--", lw=1, label="class boundary (T/2)")
  ax.set(xlabel="true sequence length", ylabel="accuracy", title=title, ylim=(0, 1.02))
  ax.legend()
  fig.tight_layout()
  _save(fig, plt, path)


def series_predictions(true_NxT, teacher_NxT, free_NxT, prefix_len: int, path: str,
                       title: str) -> None:
  """True next values vs one-step-ahead (teacher-forced) and free-running predictions."""
  plt = _pyplot()
  n = len(true_NxT)
  fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2), squeeze=False)
  for i, ax in enumerate(axes[0]):
    ax.plot(true_NxT[i], "k-", lw=2, label="true")
    ax.plot(teacher_NxT[i], "C0--", label="teacher-forced")
    ax.plot(free_NxT[i], "C3-", label="free-running")
    ax.axvspan(-0.5, prefix_len - 0.5, color="0.85", label="observed prefix")
    ax.set_xlabel("time step")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, plt, path)
