"""Argument checks and option declarations shared by the task factories."""

from seqjax.tasks.base import DATA_RULES, Option, OptionError

DATA_RULES_OPTION = Option("data_rules", str, "paper", "Data rules: the RWA paper's prose or the "
                           "authors' code (where they differ).", DATA_RULES)


def check_int(task: str, name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise OptionError(name, value, f"must be an int >= {minimum} for {task}")
  return value


def check_choice(option: Option, value):
  if value not in option.choices:
    raise OptionError(option.name, value, f"must be one of {', '.join(option.choices)}")
  return value
