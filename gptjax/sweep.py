"""Sweeps: one config trained at many points of its fields, each point the ordinary training run.

    experiments/sweeps/NAME.py: get_config() (the base) + get_sweep() -> [{'train.learning_rate': 3e-4, ...}, ...]
      ──load_sweep──▶ points: overrides checked against the base config, named from their overrides
      ──run──▶ WORKDIR/<point name>/ = `python -m gptjax.train --config=NAME.py --config.FIELD=VALUE ...`
               in its own process, pinned to its own cores (or accelerators), then `python -m gptjax.evaluate`
      ──sweep_summary──▶ WORKDIR/summary.csv, summary.md, plots/*.png

A sweep file is itself a config file (it defines get_config(), which may load another config file
with `config_file`), so a point's command is exactly what a researcher would type by hand, and
`--dry_run` prints it. Points are independent processes: a rerun skips finished points and resumes
interrupted ones from their own checkpoints, and a SLURM job array (`--slurm`) runs the same
commands on a cluster.

Helpers for get_sweep(): `grid` (every combination), `zipped` (lists side by side), `random_search`
with `loguniform` / `uniform` / `choice`, `seeds` (seeds as an axis: the summary then gives mean and
std over seeds), and `product` to combine them.

Run: python -m gptjax.sweep --sweep=experiments/sweeps/NAME.py --workdir=runs/NAME [--parallel=N]
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import workdir as workdir_lib
from gptjax.errors import GptjaxError
from gptjax.workdir import lock_holder  # the live run training in a workdir (issue 8's lock), or None

MAX_NAME = 100  # characters in a point's directory name
POINT_RECORD = 'sweep_point.json'  # in each point's workdir: what the sweep asked that point to be
ATTEMPTS = 'attempts.jsonl'  # in each point's workdir: one line per process that ran it
TRAIN_LOG = 'train.log'  # in each point's workdir: the training (and evaluation) output
EVALUATION = 'evaluate.json'  # in each point's workdir: gptjax.evaluate's result at the final step


# ---------------------------------------------------------------------------------------------
# Building points (for get_sweep() in sweep files)


def grid(axes: dict[str, Sequence]) -> list[dict]:
  """Every combination of the axes' values, the last axis changing fastest.

  grid({'train.learning_rate': [1e-3, 3e-3], 'model.n_embd': [64, 128]}) -> 4 points.
  """
  _check_axes(axes, 'grid')
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def zipped(axes: dict[str, Sequence]) -> list[dict]:
  """The axes' values side by side: point i takes the i-th value of every axis (equal lengths).

  zipped({'model.n_layer': [2, 4], 'model.n_embd': [64, 128]}) -> 2 points.
  """
  _check_axes(axes, 'zipped')
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise GptjaxError(f'zipped axes must have equal lengths, got {lengths}')
  keys = list(axes)
  return [dict(zip(keys, values)) for values in zip(*(axes[k] for k in keys))]


def seeds(values: int | Sequence[int], field: str = 'seed') -> list[dict]:
  """Seeds as an axis: seeds(3) -> [{'seed': 0}, {'seed': 1}, {'seed': 2}]; combine with `product`."""
  values = range(values) if isinstance(values, int) else values
  return [{field: int(s)} for s in values]


def product(*point_lists: Sequence[dict]) -> list[dict]:
  """Every combination of points from each list, merged: product(grid(...), seeds(3))."""
  points = []
  for combo in itertools.product(*point_lists):
    merged = {}
    for part in combo:
      clash = set(merged) & set(part)
      if clash:
        raise GptjaxError(f'product: field(s) {sorted(clash)} appear in more than one list')
      merged.update(part)
    points.append(merged)
  return points


@dataclasses.dataclass(frozen=True)
class loguniform:  # noqa: N801  (reads like a distribution in a sweep file)
  """Uniform in log space between low and high (both > 0): the usual prior for rates."""
  low: float
  high: float

  def sample(self, rng: np.random.Generator) -> float:
    if not 0 < self.low < self.high:
      raise GptjaxError(f'loguniform({self.low}, {self.high}) needs 0 < low < high')
    return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))


@dataclasses.dataclass(frozen=True)
class uniform:  # noqa: N801
  """Uniform between low and high."""
  low: float
  high: float

  def sample(self, rng: np.random.Generator) -> float:
    if not self.low < self.high:
      raise GptjaxError(f'uniform({self.low}, {self.high}) needs low < high')
    return float(rng.uniform(self.low, self.high))


@dataclasses.dataclass(frozen=True)
class choice:  # noqa: N801
  """One of the given values, equally likely."""
  values: tuple

  def __init__(self, values: Sequence):
    if not values:
      raise GptjaxError('choice() needs at least one value')
    object.__setattr__(self, 'values', tuple(values))

  def sample(self, rng: np.random.Generator):
    value = self.values[int(rng.integers(len(self.values)))]
    return value.item() if isinstance(value, np.generic) else value


def random_search(space: dict[str, Any], n: int, seed: int = 0, digits: int = 3) -> list[dict]:
  """n points drawn from `space` ({field: loguniform(..) | uniform(..) | choice([..]) | a fixed value})
  with a seeded generator, so the same call always gives the same points. Floats are rounded to
  `digits` significant digits, which keeps point names readable."""
  if n < 1:
    raise GptjaxError(f'random_search: n={n} must be >= 1')
  rng = np.random.default_rng(seed)
  points = []
  for _ in range(n):
    point = {}
    for key, dist in space.items():
      value = dist.sample(rng) if hasattr(dist, 'sample') else dist
      if isinstance(value, float) and digits and value != 0:
        value = float(f'{value:.{digits}g}')
      point[key] = value
    points.append(point)
  return points


def config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of another config file (path relative to the current directory), for a sweep
  file whose base is a shipped config: `def get_config(): return sweep.config_file('configs/x.py')`."""
  return _load_module(path, 'config file').get_config()


def _check_axes(axes, helper):
  if not isinstance(axes, dict) or not axes:
    raise GptjaxError(f'{helper}() takes a non-empty dict {{field: [values]}}, got {axes!r}')
  for k, v in axes.items():
    if isinstance(v, (str, bytes)) or not hasattr(v, '__len__') or not len(v):
      raise GptjaxError(f'{helper}(): axis {k!r} needs a non-empty list of values, got {v!r}')


# ---------------------------------------------------------------------------------------------
# A sweep: the base config and its points


@dataclasses.dataclass(frozen=True)
class Point:
  index: int
  name: str  # its directory under the sweep's workdir
  overrides: dict  # {'train.learning_rate': 3e-4, ...}
  config: ml_collections.ConfigDict  # the base with the overrides applied


@dataclasses.dataclass(frozen=True)
class Sweep:
  path: str  # the sweep file, as given (it is each point's --config)
  base_overrides: dict  # --sweep.FIELD=VALUE given to the sweep command: applied to every point
  points: list[Point]
  module: Any  # the loaded sweep file (get_config, get_sweep, optional report)

  @property
  def fields(self) -> list[str]:
    """The swept fields, in a stable order (seed last)."""
    return sorted({k for p in self.points for k in p.overrides}, key=_field_order)


def _load_module(path: str, what: str):
  if not os.path.isfile(path):
    raise GptjaxError(f'{what} {path} does not exist; pass --sweep=experiments/sweeps/NAME.py')
  name = 'gptjax_sweep_' + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except GptjaxError:
    raise
  except Exception as e:  # the file's own error: name it in one line
    line = _error_line(e, path)
    raise GptjaxError(f'{what} {path} failed to load{line}: {type(e).__name__}: {e}') from None
  return module


def _error_line(exc: BaseException, path: str) -> str:
  if isinstance(exc, SyntaxError) and exc.lineno:
    return f' (line {exc.lineno})'
  tb, line = exc.__traceback__, None
  while tb is not None:
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
      line = tb.tb_lineno
    tb = tb.tb_next
  return f' (line {line})' if line else ''


def _call(module, path: str, fn: str):
  if not callable(getattr(module, fn, None)):
    raise GptjaxError(f'sweep file {path} defines no {fn}(); a sweep file defines get_config() (the base '
                      'config) and get_sweep() (a list of {field: value} overrides)')
  try:
    return getattr(module, fn)()
  except GptjaxError as e:
    raise GptjaxError(f'sweep file {path}: {e}') from None
  except Exception as e:
    raise GptjaxError(f'sweep file {path}: {fn}() failed{_error_line(e, path)}: {type(e).__name__}: {e}') from None


def load_sweep(path: str, base: ml_collections.ConfigDict | None = None, n_devices: int = 1) -> Sweep:
  """Loads a sweep file and checks every point before anything runs.

  base: the sweep file's get_config() with the command's --sweep.FIELD overrides applied (loaded
  from the file when None). Every point's overrides must name existing fields with values of the
  field's type, and the resulting config must pass `config.validate` for n_devices devices;
  otherwise GptjaxError names the point and the problem, and nothing runs.
  """
  module = _load_module(path, 'sweep file')
  fresh = _call(module, path, 'get_config')
  if not isinstance(fresh, ml_collections.ConfigDict):
    raise GptjaxError(f'sweep file {path}: get_config() must return an ml_collections.ConfigDict')
  base = fresh if base is None else base
  base_overrides = {k: v for k, v in _flatten(base.to_dict()).items()
                    if _flatten(fresh.to_dict()).get(k, object()) != v}
  raw = _call(module, path, 'get_sweep')
  if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(p, dict) for p in raw):
    raise GptjaxError(f'sweep file {path}: get_sweep() must return a non-empty list of dicts '
                      "{'section.field': value}, got " + _short(raw))
  names = point_names(raw, base)
  seen, points = {}, []
  for i, (overrides, name) in enumerate(zip(raw, names)):
    label = f'point {i} ({name})'
    key = _canonical(overrides)
    if key in seen:
      raise GptjaxError(f'{label} repeats point {seen[key]}: every point needs different overrides')
    seen[key] = i
    config = apply_overrides(base, overrides, label)
    try:
      config_lib.validate(config, _devices_for(config, n_devices))
    except GptjaxError as e:
      raise GptjaxError(f'{label}: {e}') from None
    data_path = config.data.path
    if data_path and not config.data.url and not os.path.exists(data_path):
      raise GptjaxError(f'{label}: data file {data_path} does not exist; pass --sweep.data.path=FILE '
                        '(the sweep command) or set data.path in the sweep file')
    if name in names[:i]:  # a safety net: distinct valid overrides give distinct names
      raise GptjaxError(f'{label} has the same directory name as point {names.index(name)}')
    points.append(Point(i, name, dict(overrides), config))
  return Sweep(path, base_overrides, points, module)


def _devices_for(config, n_devices):
  return config.train.devices or n_devices


def apply_overrides(base: ml_collections.ConfigDict, overrides: dict, label: str = 'overrides'
                    ) -> ml_collections.ConfigDict:
  """A copy of base with {'section.field': value} applied. An unknown field, a section given a value
  or a value of another type than the field's is a GptjaxError naming `label` and the field."""
  config = ml_collections.ConfigDict(base.to_dict())
  for key, value in overrides.items():
    if not isinstance(key, str) or not key:
      raise GptjaxError(f'{label}: field names are strings like "train.learning_rate", got {key!r}')
    node, parts = config, key.split('.')
    for depth, part in enumerate(parts):
      fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      if part not in fields:
        where = '.'.join(parts[:depth]) or 'the config'
        close = difflib.get_close_matches(part, fields, n=1)
        hint = f" (did you mean {'.'.join(parts[:depth] + close)!r}?)" if close else \
            f'; {where} has {", ".join(sorted(fields)) or "no fields"}'
        raise GptjaxError(f'{label}: unknown config field {key!r}{hint}')
      if depth < len(parts) - 1:
        node = node[part]
    leaf, old = parts[-1], node[parts[-1]]
    if isinstance(old, ml_collections.ConfigDict):
      raise GptjaxError(f'{label}: {key!r} is a section, not a field; sweep one of its fields, e.g. '
                        f'{key}.{sorted(old.keys())[0]}')
    node[leaf] = _typed(value, old, key, label)
  return config


def _typed(value, old, key, label):
  """value converted to the type of the field's current value `old`, or a GptjaxError."""
  if isinstance(value, np.generic):
    value = value.item()
  kind = type(old)
  ok = (isinstance(value, bool) if kind is bool else
        isinstance(value, int) and not isinstance(value, bool) if kind is int else
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
        isinstance(value, str) if kind is str else False)
  if not ok:
    raise GptjaxError(f'{label}: {key}={value!r} is a {type(value).__name__}, but the field is a '
                      f'{kind.__name__} (now {old!r})')
  if kind is float:
    value = float(value)
    if not math.isfinite(value):
      raise GptjaxError(f'{label}: {key}={value!r} must be a finite number')
  return value


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _short(x) -> str:
  text = repr(x)
  return text if len(text) <= 80 else text[:77] + '...'


# ---------------------------------------------------------------------------------------------
# Point names: readable, unique, deterministic, at most MAX_NAME characters


def _field_order(key: str):
  return (key == 'seed' or key.endswith('.seed'), key)


def _canonical(overrides: dict) -> str:
  return json.dumps({k: _plain(v) for k, v in sorted(overrides.items())}, sort_keys=True)


def _plain(v):
  return v.item() if isinstance(v, np.generic) else v


def _format_value(v) -> tuple[str, bool]:
  """(text, exact): floats by repr (the shortest text that reads back as the same float)."""
  v = _plain(v)
  if isinstance(v, bool) or isinstance(v, int):
    return str(v), True
  if isinstance(v, float):
    return repr(v), True
  text = str(v)
  safe = re.sub(r'[^A-Za-z0-9._+-]', '_', text)[:40]
  return safe or '_', safe == text


def point_names(points: Sequence[dict], config: ml_collections.ConfigDict | None = None) -> list[str]:
  """Directory names for points, from their overrides: 'n_embd=64,learning_rate=0.001'.

  Fields appear in a fixed order (sorted by their dotted path, seed last), each by its last part
  unless that part names two fields of `config` (then by its whole path; without a config, two
  swept fields). A name that would be longer than MAX_NAME or had characters replaced gets a hash
  of the overrides appended. So a point's name depends only on its own overrides (and the config's
  field names): adding points to a sweep never renames the ones already run.
  """
  keys = _flatten(config.to_dict()) if config is not None else {k: None for p in points for k in p}
  leaves = {}
  for k in keys:
    leaves.setdefault(str(k).split('.')[-1], set()).add(k)
  names = []
  for p in points:
    parts, exact = [], True
    for k in sorted(p, key=lambda k: _field_order(str(k))):
      leaf = str(k).split('.')[-1]
      text, fine = _format_value(p[k])
      parts.append(f'{leaf if len(leaves.get(leaf, ())) <= 1 else k}={text}')
      exact &= fine
    name = ','.join(parts) or 'base'
    if not exact or len(name) > MAX_NAME:
      digest = hashlib.sha1(_canonical(p).encode()).hexdigest()[:8]
      name = f'{name[:MAX_NAME - len(digest) - 1]}-{digest}'
    names.append(name)
  return names


# ---------------------------------------------------------------------------------------------
# Commands: what each point runs


def format_override(value) -> str:
  """A value as config_flags reads it back exactly (floats by repr)."""
  value = _plain(value)
  return repr(value) if isinstance(value, float) else str(value)


def python_executable() -> str:
  found = shutil.which('python')
  if found and os.path.realpath(found) == os.path.realpath(sys.executable):
    return 'python'
  return sys.executable


def train_command(sweep: Sweep, point: Point, workdir: str) -> list[str]:
  """`python -m gptjax.train --config=SWEEP_FILE --config.FIELD=VALUE ... --workdir=...` for a point."""
  overrides = {**sweep.base_overrides, **point.overrides}
  return [python_executable(), '-m', 'gptjax.train', f'--config={sweep.path}',
          *[f'--config.{k}={format_override(overrides[k])}' for k in sorted(overrides, key=_field_order)],
          f'--workdir={point_dir(workdir, point)}', '--noprogress']


def evaluate_command(directory: str) -> list[str]:
  """gptjax.evaluate over the run's whole validation split at its latest checkpoint (--workdir last)."""
  return [python_executable(), '-m', 'gptjax.evaluate', '--noprogress', f'--workdir={directory}']


def point_dir(workdir: str, point: Point) -> str:
  return os.path.join(workdir, point.name)


# ---------------------------------------------------------------------------------------------
# The state of a point, read from its workdir


@dataclasses.dataclass(frozen=True)
class PointState:
  kind: str  # 'pending' | 'interrupted' | 'trained' (needs evaluation) | 'done' | 'failed' | 'running'
  step: int = 0  # the latest complete checkpoint
  detail: str = ''  # the error of a failed point, the holder of a running one


def checkpoint_steps(directory: str) -> list[int]:
  """Complete checkpoints of a run (orbax renames a step's directory into place once written)."""
  ckpt = os.path.join(directory, 'checkpoints')
  if not os.path.isdir(ckpt):
    return []
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit())


def read_attempts(directory: str) -> list[dict]:
  from gptjax.metrics import read_jsonl
  return read_jsonl(os.path.join(directory, ATTEMPTS))


def inspect_point(point: Point, directory: str) -> PointState:
  """What a point needs: nothing (done), training from scratch or from its checkpoint, evaluation."""
  holder = lock_holder(directory) if os.path.isdir(directory) else None
  if holder:
    return PointState('running', detail=holder_text(holder))
  steps = checkpoint_steps(directory)
  step = steps[-1] if steps else 0
  attempts = read_attempts(directory)
  if step >= config_lib.resolve(point.config).train.max_steps:
    evaluation = read_evaluation(directory)
    if evaluation is not None and evaluation.get('step', step) == step:
      return PointState('done', step)
    if attempts and attempts[-1].get('phase') == 'evaluate' and attempts[-1].get('status') == 'failed':
      return PointState('failed', step, attempts[-1].get('error', ''))
    return PointState('trained', step)
  if attempts and attempts[-1].get('status') == 'failed':
    return PointState('failed', step, attempts[-1].get('error', ''))
  return PointState('interrupted' if steps else 'pending', step)


def holder_text(holder: dict) -> str:
  return 'held by ' + workdir_lib.describe(holder)


def read_evaluation(directory: str) -> dict | None:
  path = os.path.join(directory, EVALUATION)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.loads(f.read().strip().splitlines()[-1])
  except (ValueError, IndexError, OSError):
    return None


def config_differences(point: Point, directory: str) -> list[str]:
  """Fields where the config a point's workdir was run with differs from what the sweep asks now.

  Compared against the workdir's config.json (what training resolved and ran) where it exists,
  else the sweep's own record of the point. Fields the recorded config lacks (added to gptjax
  since) are not differences: new fields default to the old behaviour.
  """
  resolved = config_lib.resolve(point.config).to_dict()
  for source in ('config.json', POINT_RECORD):
    path = os.path.join(directory, source)
    if not os.path.exists(path):
      continue
    with open(path, encoding='utf-8') as f:
      recorded = json.load(f)
    recorded = recorded.get('config', recorded) if source == POINT_RECORD else recorded
    old, new = _flatten(recorded), _flatten(resolved)
    differ = []
    for key, value in new.items():
      if key not in old or old[key] == value:
        continue
      if key == 'model.vocab_size' and value == 0:  # 0 asks for the tokenizer's size, which training filled in
        continue
      differ.append(f'{key}={old[key]!r} there, {value!r} now')
    return differ
  return []


def check_unchanged(sweep: Sweep, workdir: str) -> None:
  """Refuses the sweep if any existing point directory was made with a different config."""
  for point in sweep.points:
    directory = point_dir(workdir, point)
    if os.path.isdir(directory):
      differ = config_differences(point, directory)
      if differ:
        raise GptjaxError(f'point {point.index} ({point.name}) exists in {directory} with a different config: '
                          f'{"; ".join(differ[:4])}{" ..." if len(differ) > 4 else ""}; restore the sweep '
                          'file (and --sweep.FIELD flags) it was run with, or pass a new --workdir')


def write_point_record(sweep: Sweep, point: Point, workdir: str) -> None:
  from gptjax.data import atomic_write
  directory = point_dir(workdir, point)
  os.makedirs(directory, exist_ok=True)
  record = {'name': point.name, 'index': point.index, 'sweep': sweep.path,
            'overrides': {k: _plain(v) for k, v in point.overrides.items()},
            'base_overrides': {k: _plain(v) for k, v in sweep.base_overrides.items()},
            'config': config_lib.resolve(point.config).to_dict()}
  atomic_write(os.path.join(directory, POINT_RECORD), json.dumps(record, indent=1))


def write_sweep_record(sweep: Sweep, workdir: str) -> None:
  from gptjax.data import atomic_write
  os.makedirs(workdir, exist_ok=True)
  record = {'sweep': sweep.path, 'base_overrides': {k: _plain(v) for k, v in sweep.base_overrides.items()},
            'fields': sweep.fields,
            'points': [{'name': p.name, 'overrides': {k: _plain(v) for k, v in p.overrides.items()}}
                       for p in sweep.points]}
  atomic_write(os.path.join(workdir, 'sweep.json'), json.dumps(record, indent=1))


# ---------------------------------------------------------------------------------------------
# The command


def main():
  """python -m gptjax.sweep --sweep=experiments/sweeps/NAME.py [--sweep.FIELD=VALUE] [--workdir=runs/NAME]
  [--parallel=N] [--dry_run] [--slurm] [--retry_failed] [--summary_only]"""
  from absl import flags
  from ml_collections import config_flags

  from gptjax import cli, sweep_run

  config_flags.DEFINE_config_file(
      'sweep', None, 'A sweep file: get_config() (the base config) and get_sweep() (the points). '
      '--sweep.FIELD=VALUE changes the base of every point.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'The sweep directory: a subdirectory per point, summary.csv, summary.md '
                      'and plots/ (default: runs/<sweep file name>).')
  flags.DEFINE_integer('parallel', 1, 'Points run at once; the cores (and GPUs) are divided among them.')
  flags.DEFINE_integer('cores_per_point', 0, 'CPU cores each point gets (default: the cores divided equally).')
  flags.DEFINE_bool('dry_run', False, "Print each point's exact command; run nothing.")
  flags.DEFINE_bool('slurm', False, 'Write WORKDIR/sweep.slurm, a SLURM job array whose task i runs point i; '
                    'run nothing.')
  flags.DEFINE_multi_string('slurm_option', [], 'An extra #SBATCH line, e.g. --slurm_option=--time=2:00:00.')
  flags.DEFINE_bool('retry_failed', False, 'Run points that failed before again (from their last checkpoint).')
  flags.DEFINE_bool('summary_only', False, 'Write the summary and plots from what the points have now; run nothing.')
  flags.DEFINE_bool('progress', True, 'Show progress bars (points, and each running point\'s step and loss).')
  cli.define_common()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    path = config_flags.get_config_filename(f['sweep']) if f['sweep'].present else None
    if not path:
      raise GptjaxError('--sweep is required: a sweep file, e.g. --sweep=experiments/sweeps/NAME.py')
    workdir = f.workdir or os.path.join('runs', os.path.splitext(os.path.basename(path))[0])
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise GptjaxError(f'--workdir={workdir} is a file; pass a directory for the sweep')
    slots = sweep_run.plan_slots(f.parallel, cores_per_point=f.cores_per_point)
    sweep = load_sweep(path, f.sweep, sweep_run.child_devices(slots[0]))
    check_unchanged(sweep, workdir)
    if f.dry_run:
      print('\n'.join(sweep_run.dry_run_lines(sweep, workdir, slots)))
      return
    if f.slurm:
      indices = [p.index for p in sweep.points if inspect_point(p, point_dir(workdir, p)).kind != 'done']
      if not indices:
        print(f'every point of {path} is done in {workdir}; nothing to submit')
        return
      for point in sweep.points:
        write_point_record(sweep, point, workdir)
      script = os.path.join(workdir, 'sweep.slurm')
      from gptjax.data import atomic_write
      atomic_write(script, sweep_run.slurm_script(sweep, workdir, slots[0], indices, f.slurm_option,
                                        ' '.join(shlex.quote(a) for a in ['python', '-m', 'gptjax.sweep', *sys.argv[1:]])))
      print(f'wrote {script}: {len(indices)} task(s), {max(len(slots[0].cores), 1)} core(s) each; submit with '
            f'sbatch {script}, then run this command without --slurm for the summary')
      return

    import jax
    jax.config.update('jax_platforms', 'cpu')  # this process only counts parameters; children use the devices
    from gptjax import sweep_summary

    def summarize(plots=False):
      return sweep_summary.write(sweep, workdir, plots=plots)

    if not f.summary_only:
      try:
        sweep_run.run_points(sweep, workdir, slots, retry_failed=f.retry_failed, progress=f.progress,
                            on_change=summarize)
      except sweep_run.Stopped as e:
        summarize(plots=True)
        print(f'stopped by signal {e.signum}: every running point saved a checkpoint; run the same command again '
              f'to resume. Summary so far: {os.path.join(workdir, "summary.md")}', file=sys.stderr)
        sys.exit(128 + e.signum)
    rows, paths = summarize(plots=True)
    print(sweep_summary.console_table(rows, sweep))
    print('wrote ' + ', '.join(paths))
    running = [r for r in rows if r['status'] == 'running']
    if running:  # not a failure: their own processes are training them
      print(f'{len(running)} point(s) are being trained by another process (' +
            '; '.join(f"{r['point']}: {r['error']}" for r in running[:3]) +
            '); run this command again once they end, for their evaluation and the full summary', file=sys.stderr)
    failed = [r for r in rows if r['status'] == 'failed']
    if failed:
      print(f'{len(failed)} of {len(rows)} point(s) failed: ' +
            '; '.join(f"{r['point']}: {r['error']}" for r in failed[:3]), file=sys.stderr)
      sys.exit(1)

  cli.run(run)


if __name__ == '__main__':
  main()
