"""Flags shared by launch.main and launch.compare (flags live only in launch/), and their
translation to a RunConfig. The flags that pick one run (--model, --bit_order, --num_layers,
--seed, --workdir) are defined by main.py; compare.py takes lists of them instead."""

import dataclasses
import sys

from absl import flags

from seqjax import tasks
from seqjax.experiment import RunConfig

TASK = flags.DEFINE_enum("task", "adding", list(tasks.NAMES), "Task to train on.")
SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Sequence length T (default: the task's).")
HIDDEN_SIZE = flags.DEFINE_integer("hidden_size", None, "Units per layer (default: the task's).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch size (default: the task's, 100).")
NUM_STEPS = flags.DEFINE_integer("num_steps", None,
                                 "Training steps (default: the paper's run length for the task).")
LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Adam learning rate (default 1e-3).")
CLIP_NORM = flags.DEFINE_float("clip_norm", 0.0, "Global-norm gradient clipping; 0 = off.")
EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Steps between evaluations/checkpoints.")
EVAL_SIZE = flags.DEFINE_integer("eval_size", 1000,
                                 "Held-out examples (synthetic tasks; datasets use their test split).")
PERMUTE = flags.DEFINE_boolean("permute", False, "digits/mnist: fixed pixel permutation.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "mnist: folder with mnist.npz or the IDX files.")
PREFIX_LEN = flags.DEFINE_integer("prefix_len", 3,
                                  "Series tasks: observed steps before the free-running evaluation.")
FEEDBACK = flags.DEFINE_enum("feedback", "teacher", ["teacher", "free", "scheduled"],
                             "Series tasks: feed the true previous value (teacher), the model's "
                             "own prediction (free), or a mix whose teacher share falls linearly "
                             "from 1 to 0 (scheduled).")
TEACHER_FORCING_DECAY_STEPS = flags.DEFINE_integer(
    "teacher_forcing_decay_steps", 10000, "scheduled: steps over which p falls from 1 to 0.")
UNROLL = flags.DEFINE_integer("unroll", None, "Time steps per loop iteration (speed only; default: "
                              "the backend's measured best, 8 on GPU, 1 on CPU).")
REMAT = flags.DEFINE_boolean("remat", False, "Checkpoint the time loop (memory ~ sqrt(T)).")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                          "Matmul operand precision; bfloat16 keeps params and state in float32.")
NUM_DEVICES = flags.DEFINE_integer("num_devices", None,
                                   "Data-parallel devices per process (default: all local ones).")
DISTRIBUTED = flags.DEFINE_boolean("distributed", False,
                                   "Call jax.distributed.initialize() first (multi-host runs).")
COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                  "--distributed: host:port of process 0 (default: from the "
                                  "cluster environment, e.g. SLURM).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: process count.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index.")

def run_config(model: str, bit_order: str, num_layers: int, seed: int,
               workdir: str = None) -> RunConfig:
  """The RunConfig of the shared flags plus one run's own settings (task defaults filled)."""
  cfg = RunConfig(model=model, task=TASK.value, seq_len=SEQ_LEN.value, bit_order=bit_order,
                  hidden_size=HIDDEN_SIZE.value, num_layers=num_layers,
                  batch_size=BATCH_SIZE.value, num_steps=NUM_STEPS.value,
                  learning_rate=LEARNING_RATE.value, clip_norm=CLIP_NORM.value, seed=seed,
                  eval_every=EVAL_EVERY.value, eval_size=EVAL_SIZE.value, permute=PERMUTE.value,
                  data_dir=DATA_DIR.value, prefix_len=PREFIX_LEN.value, feedback=FEEDBACK.value,
                  teacher_forcing_decay_steps=TEACHER_FORCING_DECAY_STEPS.value,
                  unroll=UNROLL.value, remat=REMAT.value, dtype=DTYPE.value,
                  num_devices=NUM_DEVICES.value)
  cfg = cfg.resolved()
  return dataclasses.replace(cfg, workdir=workdir or default_workdir(cfg))


def default_workdir(cfg: RunConfig) -> str:
  layers = f"x{cfg.num_layers}" if cfg.num_layers > 1 else ""
  order = f"-{cfg.bit_order}" if cfg.task == "binary_addition" else ""
  return f"runs/{cfg.task}{order}-{cfg.model}{layers}-T{cfg.seq_len}-s{cfg.seed}"


def initialize_distributed():
  """jax.distributed.initialize() when --distributed (before any other JAX work)."""
  if DISTRIBUTED.value:
    import jax
    jax.distributed.initialize(coordinator_address=COORDINATOR.value,
                               num_processes=NUM_PROCESSES.value, process_id=PROCESS_ID.value)


def log(line: str) -> None:
  """Prints on process 0 only."""
  import jax
  if jax.process_index() == 0:
    print(line, flush=True)



def run_or_exit(argv, body):
  """Runs body() after --distributed set-up. A user-facing error ends the process with one line
  and exit code 1; Ctrl-C with 130 (after the run has saved its checkpoint)."""
  from seqjax import checkpoint, experiment
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; all settings are --flags (see --help)")
  try:
    initialize_distributed()
    body()
  except (experiment.RunError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(130)
