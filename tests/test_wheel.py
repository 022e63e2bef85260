"""The launcher installed from a wheel: console scripts that run outside any checkout, and no
top-level package named `launch` (the checkout's launch/ is installed as seqjax_launch)."""

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("seqjax-train", "seqjax-compare", "seqjax-summarize", "seqjax-inspect",
           "seqjax-benchmark", "seqjax-sample")


def _tracked_copy(dest):
  """The checkout's tracked and untracked-but-not-ignored files (what a clone would hold), so
  the build writes its build/ and egg-info there, not into the checkout."""
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
  for f in files:
    if os.path.isfile(os.path.join(ROOT, f)):
      os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, f), os.path.join(dest, f))


@pytest.mark.slow
def test_wheel_installs_console_scripts_that_train_outside_a_checkout(tmp_path):
  src, dist = tmp_path / "src", tmp_path / "dist"
  _tracked_copy(src)
  # built as the README says (an isolated build: pip brings the setuptools that pyproject.toml
  # asks for; the one a new venv ships may be too old to build without isolation)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                  str(src)], check=True)
  (wheel,) = glob.glob(str(dist / "seqjax-*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert tops == {"seqjax", "seqjax_launch"}
  for package, folder in (("seqjax", "seqjax"), ("seqjax_launch", "launch")):
    sources = {os.path.relpath(p, os.path.join(ROOT, folder)) for p in
               glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)}
    assert {n[len(package) + 1:] for n in names if n.startswith(package + "/")} == sources
  (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
  text = zipfile.ZipFile(wheel).read(entry_points).decode()
  for script in SCRIPTS:
    assert f"{script} = seqjax_launch." in text

  # a venv of its own; the dependencies come from this interpreter's site-packages (read, not
  # processed: its .pth files, such as an editable install of the checkout, are not run)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  (site,) = glob.glob(str(venv / "lib" / "python*" / "site-packages"))
  with open(os.path.join(site, "deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                  "install", "--no-deps", "--no-index", "-q", wheel], check=True)
  away = tmp_path / "elsewhere"
  away.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"

  def run(*argv):
    return subprocess.run(list(argv), cwd=away, env=env, capture_output=True, text=True,
                          timeout=300)

  where = run(str(venv / "bin" / "python"), "-c",
              "import importlib.util, seqjax; print(seqjax.__file__); "
              "print(importlib.util.find_spec('launch'))")
  assert where.stdout.split()[0].startswith(site) and where.stdout.split()[1] == "None", where
  # every console script names a function defined in a module of the installed package (one
  # process, read not imported: each program defines its own absl flags); the program behind
  # them all, launch._cli.run, is seen answering --help once
  found = run(str(venv / "bin" / "python"), "-c",
              "import ast, importlib.util\n"
              "from importlib.metadata import entry_points\n"
              "for e in sorted(entry_points(group='console_scripts'), key=lambda e: e.name):\n"
              "  if e.name.startswith('seqjax-'):\n"
              "    module, name = e.value.split(':')\n"
              "    tree = ast.parse(open(importlib.util.find_spec(module).origin).read())\n"
              "    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}\n"
              "    print(e.name, module.split('.')[0], name in defined)")
  assert [line.split() for line in found.stdout.splitlines()] == [
      [script, "seqjax_launch", "True"] for script in sorted(SCRIPTS)], found.stderr[-2000:]
  help = run(str(venv / "bin" / "seqjax-train"), "--help")
  assert help.returncode in (0, 1), help.stderr[-500:]
  for flag in ("--model", "--task", "--seeds", "--workdir", "--optimizer"):
    assert f"  {flag}:" in help.stdout
  trained = run(str(venv / "bin" / "seqjax-train"), "--task=adding", "--seq_len=5",
                "--hidden_size=3", "--batch_size=4", "--num_steps=2", "--eval_every=1",
                "--eval_size=8", "--workdir=run")
  assert trained.returncode == 0, trained.stderr[-2000:]
  rows = [json.loads(line) for line in open(away / "run" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [0, 1, 2]
  config = json.load(open(away / "run" / "config.json"))
  assert config["git_commit"] is None  # an installed package is no checkout
