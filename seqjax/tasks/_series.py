"""The options of the series tasks (trajectory, decay), declared once: how the model is fed
during training and how long it observes before running free. The training loop reads them
(`train.Config`); the tasks' samplers do not depend on them."""

from seqjax.tasks.base import Option

FEEDBACK_MODES = ("teacher", "free", "scheduled")
SERIES_OPTIONS = (
    Option("prefix_len", int, 3, "Observed steps before the model runs free.", minimum=1),
    Option("feedback", str, "teacher", "Training inputs: the true previous value (teacher), the "
           "model's own prediction (free), or a mix whose teacher share falls linearly from 1 to "
           "0 (scheduled).", FEEDBACK_MODES),
    Option("teacher_forcing_decay_steps", int, 10000, "--feedback=scheduled: steps over which the "
           "teacher share falls from 1 to 0.", minimum=1),
)
