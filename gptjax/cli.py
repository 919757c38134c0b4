"""Command-line entry points: `python -m gptjax.train` and `python -m gptjax.sample`.

Flags live here, not in the library modules, so importing gptjax defines no absl flags. Every
problem with what the user asked for (GptjaxError, a mistyped config field, a bad flag value) ends
the program with one line `error: ...` on stderr and exit status 2; --debug shows the traceback.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging

from gptjax.errors import GptjaxError

EXIT_USAGE = 2


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_USAGE)


def _parse(argv):
  """absl flag parsing with one-line errors instead of usage dumps and tracebacks."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # config_flags: unknown/mistyped field
    detail = ' '.join(str(e).replace('\\n', ' ').replace("\\'", '').split())
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', detail)
    if suggestion:
      right, wrong = suggestion.groups()
      culprit = next((a.split('=')[0] for a in argv if a.startswith('--config.')
                      and wrong in a.split('=')[0].split('.')), '--config.' + wrong)
      _fail(f'unknown config field {culprit} (did you mean {right!r}?)')
    name = re.search(r"'(\w+)'", detail)
    culprit = name and next((a.split('=')[0] for a in argv if a.startswith('--config.')
                             and name.group(1) in a.split('=')[0].split('.')), None)
    _fail(f'unknown config field {culprit}; see the config file for the fields there are' if culprit
          else f'bad --config override: {detail}')


def _run(main):
  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:  # orbax and absl log every save at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except GptjaxError as e:
      if flags.FLAGS.debug:
        raise
      _fail(str(e))
  app.run(wrapped, flags_parser=_parse)


def unescape(text: str) -> str:
  r"""Turns the escapes \n, \t and \\ typed on a command line into the characters they name."""
  return re.sub(r'\\([nt\\])', lambda m: {'n': '\n', 't': '\t', '\\': '\\'}[m.group(1)], text)


def _define_common():
  flags.DEFINE_bool('debug', False, 'Show full tracebacks for errors.')


def train() -> None:
  from ml_collections import config_flags

  from gptjax import config as default_config

  config_flags.DEFINE_config_file(
      'config', default_config.__file__,
      'A config file defining get_config(); default: the embedded standard-library run.',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config file name>).')
  flags.DEFINE_integer('restore_step', None,
                       'Resume from this checkpoint step instead of the latest (e.g. if the latest is damaged).')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')
  _define_common()

  def main(argv):
    if len(argv) > 1:
      raise GptjaxError(f'unexpected arguments {argv[1:]}; flags look like --name=value')
    from gptjax import train as train_lib
    f = flags.FLAGS
    config_path = config_flags.get_config_filename(f['config'])
    if not os.path.isfile(config_path):
      raise GptjaxError(f'config file {config_path} does not exist; pass --config=configs/NAME.py')
    name = 'default' if os.path.samefile(config_path, default_config.__file__) else \
        os.path.splitext(os.path.basename(config_path))[0]
    workdir = f.workdir or os.path.join('runs', name)
    try:
      result = train_lib.train_and_evaluate(f.config, workdir, restore_step=f.restore_step,
                                            progress=f.progress)
    except train_lib.Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(128 + e.signum)  # the shell's convention for "ended by signal N"
    shown = ', '.join(f'{k} {v:.4g}' for k, v in result.items() if k != 'step')
    print(f'done: step {result["step"]}' + (f', {shown}' if shown else '') + f'; workdir {workdir}')

  _run(main)


def sample() -> None:
  flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/ and tokenizer.json.')
  flags.DEFINE_string('prompt', '\n', 'Text to continue.')
  flags.DEFINE_integer('max_new_tokens', None,
                       "Tokens to generate per sample (default: up to the end of the model's context).")
  flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0 = greedy.')
  flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens (0 = all).')
  flags.DEFINE_float('top_p', 1.0, 'Keep the smallest set of tokens whose probability reaches p.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer('num_samples', 1, 'Independent samples, generated as one batch.')
  flags.DEFINE_string('stop', '', 'Stop a sample at this text (e.g. "\\n"); it is not printed.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to load (default: the latest).')
  _define_common()

  def main(argv):
    if len(argv) > 1:
      raise GptjaxError(f'unexpected arguments {argv[1:]}; flags look like --name=value')
    from gptjax import sample as sample_lib
    f = flags.FLAGS
    if not f.workdir:
      raise GptjaxError('--workdir is required: the run directory to sample from')
    texts = sample_lib.sample_from_workdir(
        f.workdir, prompt=unescape(f.prompt),
        max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_k=f.top_k, top_p=f.top_p,
        seed=f.seed, num_samples=f.num_samples,
        stop=unescape(f.stop), step=f.step)
    for i, text in enumerate(texts):
      if len(texts) > 1:
        print(f'--- sample {i}')
      print(text)

  _run(main)
