"""The light core: `seqjax.cells` and `seqjax.scan` need only jax and numpy."""

import configparser
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_ONLY = ("optax", "flax", "absl", "matplotlib", "sklearn")

# Runs in a fresh interpreter where the train-only packages cannot be imported (a finder placed
# first on sys.meta_path refuses them, installed or not), then scans every registered cell and a
# stack over a tiny batch and compares with cell.step called in a Python loop.
CORE_SCRIPT = """
import json, sys

BLOCKED = set(json.loads(sys.argv[1]))

class Refuse:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} is not available in the light core")
    return None

sys.meta_path.insert(0, Refuse())
for name in BLOCKED:
  try:
    __import__(name)
  except ImportError:
    pass
  else:
    raise SystemExit(f"the blocker let {name} through")

import jax
import jax.numpy as jnp
import numpy as np
import seqjax
from seqjax import cells

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
B, T, F, H = 2, 5, 3, 4


def loop(cell, params, xs, state):
  hs = []
  for t in range(xs.shape[1]):
    state, h = cell.step(params, state, xs[:, t])
    hs.append(h)
  return state, jnp.stack(hs, axis=1)


checked = []
makers = [(name, lambda name=name: cells.get(name, hidden_size=H)) for name in cells.NAMES]
makers.append(("stack", lambda: cells.stack([cells.get(cells.NAMES[0], 5), cells.rwa(H)])))
for i, (name, make) in enumerate(makers):
  cell = make()
  params = cell.init(jax.random.key(i), F)
  # every leaf replaced by random values, so no zero bias or special init hides a mistake
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(100 + i), len(leaves))
  params = jax.tree.unflatten(
      treedef, [0.5 * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
  xs = jax.random.normal(jax.random.key(200 + i), (B, T, F))
  state0 = cell.initial_state(params, (B,))
  final, hs = seqjax.scan(cell, params, xs)
  want_final, want_hs = loop(cell, params, xs, state0)
  assert hs.shape == (B, T, cell.hidden_size), (name, hs.shape)
  np.testing.assert_allclose(hs, want_hs, rtol=1e-5, atol=1e-6, err_msg=name)
  for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(want_final)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
  checked.append(name)

loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"checked": checked, "loaded": loaded}))
"""


@pytest.mark.slow
def test_cells_and_scan_run_without_the_train_packages():
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", CORE_SCRIPT, json.dumps(TRAIN_ONLY)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  from seqjax import cells
  assert report == {"checked": [*cells.NAMES, "stack"], "loaded": []}


def _names(requirements):
  return sorted(re.match(r"[A-Za-z0-9_.-]+", r.strip()).group(0).lower() for r in requirements)


def test_setup_cfg_core_requirements_are_jax_and_numpy():
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  install_requires = [r for r in config["options"]["install_requires"].splitlines() if r.strip()]
  assert _names(install_requires) == ["jax", "numpy"]
  extras = config["options.extras_require"]
  assert set(_names(extras["train"].split())) >= {"optax", "flax", "absl-py", "matplotlib",
                                                  "scikit-learn"}
  assert set(_names(extras["test"].split())) >= {"pytest", "pytest-xdist", "ruff"}


def test_installed_core_requirements_are_jax_and_numpy():
  try:
    dist = importlib.metadata.distribution("seqjax")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("seqjax is not installed (pip install -e .)")
  url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
  if url.startswith("file://") and pathlib.Path(url[len("file://"):]).resolve() != ROOT:
    pytest.skip(f"the installed seqjax is another checkout ({url}), not {ROOT}")
  core = [r for r in dist.requires or [] if "extra ==" not in r]
  assert _names(core) == ["jax", "numpy"]
