"""Starting a program of the launcher, from a checkout (`python -m launch.main`) or as an
installed console script (`seqjax-train`)."""

import sys

from absl import app, flags

from . import allocator

MALLOC = flags.DEFINE_enum(
    "malloc", "keep", list(allocator.MODES), "keep: glibc's malloc keeps the memory freed "
    "(no mmap, no trim, one arena: on CPU, XLA's and torch's per-step buffers then fault no "
    "new pages; resident memory stays at its peak); system: the C library's default "
    "(launch/allocator.py).")


def start(main, module) -> None:
  """app.run(main) after setting the allocator (--malloc), with `--help` listing the flags
  `module` (the program) uses.

  absl's --help lists the flags defined in the file sys.argv[0] names: `python -m launch.main`
  gives launch/main.py, where launch/flags.py's flags are not defined, and a console script
  gives its generated wrapper, where none are. So every flag the program defines or takes from
  launch/flags.py is declared a key flag of sys.argv[0], and the wrapper gets the program's
  docstring as its usage text."""
  names = {module.__name__, f"{module.__package__}.flags", __name__}
  by_module = flags.FLAGS.flags_by_module_dict()
  for name in names:
    for flag in by_module.get(name, []):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if not sys.modules["__main__"].__doc__:
    sys.modules["__main__"].__doc__ = module.__doc__
  app.run(lambda argv: _with_allocator(main, argv))


def _with_allocator(main, argv):
  """main(argv) after --malloc, under `allocator.matching_layout()`."""
  if MALLOC.value == "keep":
    allocator.keep_freed_memory()
  with allocator.matching_layout():
    return main(argv)
