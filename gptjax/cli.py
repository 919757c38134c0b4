"""What every command line shares: flag parsing with one-line errors, and how a command ends.

Each command's flags and body live in its own module's `main()` (`gptjax/train.py`,
`gptjax/sample.py`, ...), so `python -m gptjax.NAME` is the command and importing a library module
defines no absl flags. This module imports no gptjax module but `errors` and `config` (for the
default config file): library code never imports an entry point, and nothing here imports one.

Every problem with what the user asked for (GptjaxError, a mistyped config field, a bad flag value)
ends the program with one line `error: ...` on stderr and exit status 2; --debug shows the traceback.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags, logging

from gptjax.errors import GptjaxError

EXIT_USAGE = 2


def fail(message: str) -> None:
  """Ends the program with `error: message` on stderr and exit status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_USAGE)


def parse_flags(argv):
  """absl flag parsing with one-line errors instead of usage dumps and tracebacks."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # config_flags: unknown/mistyped field
    detail = ' '.join(str(e).replace('\\n', ' ').replace("\\'", '').split())
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', detail)
    if suggestion:
      right, wrong = suggestion.groups()
      culprit = next((a.split('=')[0] for a in argv if a.startswith('--config.')
                      and wrong in a.split('=')[0].split('.')), '--config.' + wrong)
      fail(f'unknown config field {culprit} (did you mean {right!r}?)')
    name = re.search(r"'(\w+)'", detail)
    culprit = name and next((a.split('=')[0] for a in argv if a.startswith('--config.')
                             and name.group(1) in a.split('=')[0].split('.')), None)
    fail(f'unknown config field {culprit}; see the config file for the fields there are' if culprit
         else f'bad --config override: {detail}')


def define_common() -> None:
  """Flags every command has."""
  flags.DEFINE_bool('debug', False, 'Show full tracebacks for errors.')


def define_config_flag(help_text: str = 'A config file defining get_config().') -> None:
  """--config=configs/NAME.py with --config.section.field=value overrides (default: gptjax/config.py)."""
  from ml_collections import config_flags

  from gptjax import config as default_config
  config_flags.DEFINE_config_file('config', default_config.__file__, help_text, lock_config=True)


def no_extra_arguments(argv) -> None:
  if len(argv) > 1:
    raise GptjaxError(f'unexpected arguments {argv[1:]}; flags look like --name=value')


def run(main) -> None:
  """Runs main(argv) as a command: parses flags, quiets INFO logs, turns GptjaxError into one line."""
  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:  # orbax and absl log every save at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except GptjaxError as e:
      if flags.FLAGS.debug:
        raise
      fail(str(e))
  app.run(wrapped, flags_parser=parse_flags)


def unescape(text: str) -> str:
  r"""Turns the escapes \n, \t and \\ typed on a command line into the characters they name."""
  return re.sub(r'\\([nt\\])', lambda m: {'n': '\n', 't': '\t', '\\': '\\'}[m.group(1)], text)
