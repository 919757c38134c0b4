"""What every command line shares: flag parsing with one-line errors, and how a command ends.

Each command's flags and body live in its own module's `main()` (`gptjax/train.py`,
`gptjax/sample.py`, ...), so `python -m gptjax.NAME` is the command and importing a library module
defines no absl flags. This module imports no gptjax module but `errors` and `config` (for the
default config file): library code never imports an entry point, and nothing here imports one.

Every problem the user can act on (GptjaxError, a mistyped config field, a bad flag value, a config
file that does not load, an OS error) ends the program with one line `error: ...` on stderr and exit
status 2; --debug shows the traceback.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import select
import sys
import traceback
import types

from absl import app, flags, logging

from gptjax.errors import GptjaxError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for "ended by SIGINT"
EXIT_READER_GONE = 141  # the shell's "ended by SIGPIPE": what `... | head` does to Unix tools


def fail(message: str) -> None:
  """Ends the program with `error: message` on stderr and exit status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_USAGE)


def _debug_requested(argv) -> bool:
  """Whether argv turns --debug on (read by hand: it is needed when flag parsing itself fails)."""
  on = False
  for a in argv[1:]:
    if a in ('--debug', '--debug=true', '--debug=True', '--debug=1'):
      on = True
    elif a in ('--nodebug', '--debug=false', '--debug=False', '--debug=0'):
      on = False
  return on


def _config_argument(argv) -> str | None:
  """The value of the last --config=PATH[:ARGS] (or --config PATH) in argv, if any."""
  value = None
  for i, a in enumerate(argv[1:], 1):
    if a.startswith('--config='):
      value = a[len('--config='):]
    elif a == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def config_file_error(spec: str) -> str | None:
  """Why the config file `spec` (PATH or PATH:ARGS, as --config takes it) does not give a config, in
  one line naming the file and the line; None if it loads. Runs the file as ml_collections does."""
  from ml_collections import ConfigDict

  path, colon, arg = spec.partition(':')
  if os.path.isdir(path):
    return f'config file {path} is a directory; pass --config=configs/NAME.py'
  if not os.path.isfile(path):
    return f'config file {path} does not exist; pass --config=configs/NAME.py'
  try:
    with open(path, 'rb') as f:
      source = f.read()
  except OSError as e:
    return f'config file {path} cannot be read ({e.strerror}); make it readable'
  try:
    code = compile(source, path, 'exec')
  except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
    line = f', line {e.lineno}' if getattr(e, 'lineno', None) else ''
    return f'config file {path}{line}: {type(e).__name__}: {getattr(e, "msg", None) or e}; fix the file'
  module = types.ModuleType('gptjax_config_check')
  module.__file__ = path
  try:
    exec(code, module.__dict__)  # pylint: disable=exec-used
    get_config = module.__dict__.get('get_config')
    if not callable(get_config):
      return (f'config file {path} defines no get_config(); a config file defines get_config() returning '
              'an ml_collections.ConfigDict')
    config = get_config(*([arg] if colon else []))
  except Exception as e:  # anything the file's code raised: say where
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename)
             == os.path.abspath(path)]
    where = f', line {lines[-1]}' if lines else ''
    detail = (str(e).strip().splitlines() or [''])[0]
    detail = f': {detail}' if detail else ''
    return f'config file {path}{where}: {type(e).__name__}{detail}; fix the file'
  if not isinstance(config, ConfigDict):
    got = 'None (is its return statement missing?)' if config is None else type(config).__name__
    return f'config file {path}: get_config() returned {got}, not an ml_collections.ConfigDict'
  return None


def parse_flags(argv):
  """absl flag parsing with one-line errors instead of usage dumps and tracebacks.

  A config file that fails to load (a syntax error, an exception in get_config(), no get_config)
  is named with its line and error; --debug shows the traceback instead.
  """
  try:
    parsed = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    spec = _config_argument(argv)
    about_config = not isinstance(e, flags.Error) or str(e).startswith('flag --config=')
    problem = spec is not None and about_config and config_file_error(spec)
    if _debug_requested(argv) and (problem or not isinstance(e, flags.Error)):
      raise
    if problem:
      fail(problem)
    if isinstance(e, flags.Error):  # absl words some as a tuple: ('Non-boolean argument to boolean flag', 'x')
      fail(re.sub(r"\('([^']*)', '(.*)'\)$", r"\1 '\2'", str(e).splitlines()[0]))
    if not isinstance(e, (AttributeError, KeyError, TypeError, ValueError)):
      fail(f'{type(e).__name__} while reading the command line: {(str(e).splitlines() or [""])[0]}')
    _override_error(argv, e)
  # ml_collections defers a config file it could not open until the config is used: check it now.
  if 'config' in flags.FLAGS:
    from ml_collections import ConfigDict
    if not isinstance(flags.FLAGS['config'].value, ConfigDict):
      spec = _config_argument(argv) or ''
      fail(config_file_error(spec) or f'config file {spec} gave no config; pass --config=configs/NAME.py')
  return parsed


def _override_error(argv, e: Exception) -> None:
  """One line for a bad --config.FIELD=VALUE override (config_flags raises plain Python errors)."""
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


class _ReportedElsewhere(std_logging.Filter):
  """Drops orbax's ERROR logs (with their tracebacks): a save or restore that fails raises its error
  in the main thread at the next save, wait or restore, where the command reports it in one line."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not ('orbax' in record.pathname and record.levelno >= std_logging.ERROR)


def run(main) -> None:
  """Runs main(argv) as a command: parses flags, quiets INFO logs, and ends every failure the user
  can act on (GptjaxError, an OS error, Ctrl-C) with one line; --debug shows the traceback. A reader
  of stdout that goes away (`| head`) ends the command quietly, with status 141 as SIGPIPE would."""
  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:  # orbax and absl log every save at INFO
      logging.set_verbosity(logging.WARNING)
    if not flags.FLAGS.debug:
      logging.get_absl_logger().addFilter(_ReportedElsewhere())
    try:
      main(argv)
    except GptjaxError as e:
      if flags.FLAGS.debug:
        raise
      fail(str(e))
    except OSError as e:  # one the library did not name more precisely
      if isinstance(e, BrokenPipeError) and not flags.FLAGS.debug and _stdout_reader_gone():
        # Whoever read stdout has stopped (`gptjax.sample ... | head`): stop quietly, as Unix tools
        # do, with stdout on /dev/null so that Python's flush at exit cannot fail on it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_READER_GONE)
      if flags.FLAGS.debug:
        raise
      where = f'{e.filename}: ' if e.filename else ''
      fail(f'{where}{e.strerror or e} (--debug shows where it happened)')
    except KeyboardInterrupt:
      if flags.FLAGS.debug:
        raise
      print('interrupted', file=sys.stderr)
      sys.exit(EXIT_INTERRUPTED)
  app.run(wrapped, flags_parser=parse_flags)


def _stdout_reader_gone() -> bool:
  """True if stdout is a pipe or socket whose reading end has closed."""
  try:
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))
  except (AttributeError, OSError, ValueError):  # no poll here, or stdout is not a file
    return False


def unescape(text: str) -> str:
  r"""Turns the escapes \n, \t and \\ typed on a command line into the characters they name."""
  return re.sub(r'\\([nt\\])', lambda m: {'n': '\n', 't': '\t', '\\': '\\'}[m.group(1)], text)
