"""Where a run's evaluation rows go besides metrics.jsonl: writers.

A writer factory `make(run_folder)` returns an object with `write(step, scalars)` and `close()`.
`experiment.run(settings, writers=[make, ...])` makes one per run folder (on process 0) and
sends it exactly the rows of that run's metrics.jsonl, as they are saved: `step`, and every other
key of the row as `scalars` (a diverged run's last row is {"step": k, "diverged_at_step": k}).
Rows a resumed run restores were sent before and are not sent again. W&B, MLflow or anything
else plugs in this way; `TensorBoard` is the one seqjax brings (`--tensorboard`).
"""

import importlib.util
import os
from typing import Optional

from seqjax.settings import RunError

TENSORBOARD_FOLDER = "tensorboard"


class TensorBoard:
  """TensorBoard event files in <run folder>/tensorboard/, one scalar per key at its step
  (tensorboardX: no TensorFlow needed). Flushed at every row, so TensorBoard shows a live run.

  hparams: the run's settings, shown in TensorBoard's hparams view against `metrics` (scalar
  tags, e.g. eval_loss); a list value is shown as text."""

  def __init__(self, run_folder: str, hparams: Optional[dict] = None, metrics=()):
    from tensorboardX import SummaryWriter  # imported only by runs that write TensorBoard files
    self._writer = SummaryWriter(os.path.join(run_folder, TENSORBOARD_FOLDER))
    if hparams:
      from tensorboardX.summary import hparams as hparams_summaries
      shown = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
               for k, v in hparams.items()}
      # the experiment and this session's values, in this run's own event file (add_hparams
      # would write them into a run of their own)
      experiment, session, _ = hparams_summaries(shown, {m: 0.0 for m in metrics})
      self._writer.file_writer.add_summary(experiment)
      self._writer.file_writer.add_summary(session)

  def write(self, step: int, scalars: dict) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, global_step=step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def check_tensorboard() -> None:
  """A RunError, before anything is written, where tensorboardX is not installed."""
  if importlib.util.find_spec("tensorboardX") is None:
    raise RunError("--tensorboard=true: needs the tensorboardX package (pip install "
                   "'tensorboardX>=2.6', or seqjax's [train] extra)")


class Writers:
  """Every run's writers, one per factory; `send` gives each the rows of its run not yet sent.
  A context manager: every writer made is closed on leaving, whatever ends the run.

  training: factories of writers (seqjax's TensorBoard) that also get the training scalars
  `send` is given (the learning rate, the gradient norm) with the row of their step; the
  others (`makes`) get exactly the rows of metrics.jsonl."""

  def __init__(self, makes, run_folders, rows, training=()):
    self._per_run, self._sent = [], [len(r) for r in rows]  # restored rows were sent before
    try:
      for folder in run_folders:
        self._per_run.append([])
        for make in training:
          self._per_run[-1].append((make(folder), True))
        for make in makes:
          self._per_run[-1].append((make(folder), False))
    except BaseException:
      self.close()
      raise

  def send(self, rows, training=None) -> None:
    """training: per run, {step: {name: value}} for the training writers."""
    for i, writers in enumerate(self._per_run):
      for row in rows[i][self._sent[i]:]:
        scalars = {k: v for k, v in row.items() if k != "step"}
        more = dict(scalars, **training[i].get(row["step"], {})) if training else scalars
        for w, gets_training in writers:
          w.write(row["step"], more if gets_training else scalars)
      self._sent[i] = len(rows[i])

  def close(self) -> None:
    errors = []
    for writers in self._per_run:
      for w, _ in writers:
        try:
          w.close()
        except Exception as e:  # close the others too; the first failure is raised after
          errors.append(e)
    self._per_run = []
    if errors:
      raise errors[0]

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
