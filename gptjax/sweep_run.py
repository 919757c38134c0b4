"""Running a sweep's points: dividing the machine into slots, one child process per point, and the
same commands for a shell (--dry_run) or a SLURM job array (--slurm).

    plan_slots(parallel) ──▶ [Slot(cores, gpus)]: equal shares of the CPU cores (and GPUs)
    run_points(sweep, workdir, slots): while points remain, start `gptjax.train` for the next one in a
      free slot (pinned to its cores, thread pools sized to them, SIGTERM if the sweep dies), then
      `gptjax.evaluate` in the same slot; record each process in the point's attempts.jsonl

A child's CPU affinity is set between fork and exec (os.sched_setaffinity), so it holds from the
first instruction; XLA:CPU sizes its thread pool from the affinity (one `tf_XLAEigen` thread per
allowed core, read back from /proc and recorded), OpenMP/OpenBLAS/MKL from the environment.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from typing import Callable, Sequence

from gptjax import config as config_lib
from gptjax import sweep as sw
from gptjax.errors import GptjaxError

THREAD_ENV = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')  # sized to a child's cores


# ---------------------------------------------------------------------------------------------
# Dividing the machine: one slot per parallel point, with its own cores or accelerators


@dataclasses.dataclass(frozen=True)
class Slot:
  """What one running point gets: CPU cores to pin to, and accelerators (GPU ids) if any."""
  index: int
  cores: tuple[int, ...]  # () when the platform cannot pin
  gpus: tuple[str, ...] = ()
  gpu_share: int = 1  # how many slots share these GPUs (1: this slot has them alone)

  def env(self) -> dict[str, str]:
    """Environment variables that keep a child inside its share: thread pools sized to its cores
    (XLA:CPU sizes its own pool from the CPU affinity), its GPUs and its share of their memory."""
    env = {name: str(len(self.cores)) for name in THREAD_ENV} if self.cores else {}
    if self.gpus:
      env['CUDA_VISIBLE_DEVICES'] = ','.join(self.gpus)
      if self.gpu_share > 1:  # several points on one GPU: each may take its share of the memory
        env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / self.gpu_share:.2f}'
    return env

  def describe(self) -> str:
    parts = [f'cores {_core_list(self.cores)}' if self.cores else 'all cores']
    if self.gpus:
      parts.append(f'GPU {",".join(self.gpus)}' + (f' (shared by {self.gpu_share})' if self.gpu_share > 1 else ''))
    return ', '.join(parts)


def available_cores() -> tuple[int, ...]:
  """The CPU cores this process may run on (its affinity); () where the OS cannot pin processes."""
  if not hasattr(os, 'sched_getaffinity'):
    return ()
  return tuple(sorted(os.sched_getaffinity(0)))


def available_gpus() -> tuple[str, ...]:
  """NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return tuple(g.strip() for g in visible.split(',') if g.strip() and g.strip() != '-1')
  if not shutil.which('nvidia-smi'):
    return ()
  try:
    out = subprocess.run(['nvidia-smi', '--query-gpu=index', '--format=csv,noheader'], capture_output=True,
                         text=True, timeout=20).stdout
  except (OSError, subprocess.SubprocessError):
    return ()
  return tuple(line.strip() for line in out.splitlines() if line.strip().isdigit())


def plan_slots(parallel: int, cores: Sequence[int] | None = None, gpus: Sequence[str] | None = None,
               cores_per_point: int = 0) -> list[Slot]:
  """`parallel` slots that divide the machine: equal shares of the cores (pinned; the losses depend in
  their last bits on how many cores XLA's thread pool has, so every point gets the same number) and,
  where there are GPUs, of the GPUs (whole GPUs when there are enough, else points share one)."""
  cores = available_cores() if cores is None else tuple(cores)
  gpus = available_gpus() if gpus is None else tuple(gpus)
  if parallel < 1:
    raise GptjaxError(f'--parallel={parallel} must be >= 1')
  slots = []
  if cores:
    per = cores_per_point or len(cores) // parallel
    if per < 1 or per * parallel > len(cores):
      if not gpus:
        raise GptjaxError(f'--parallel={parallel} x {cores_per_point or 1} core(s) each needs '
                          f'{parallel * max(cores_per_point, 1)} cores, but this process may use '
                          f'{len(cores)} ({_core_list(cores)}); lower --parallel')
      per = 0  # accelerator points share the host's cores
  for i in range(parallel):
    mine = tuple(cores[i * per:(i + 1) * per]) if cores and per else ()
    if gpus:
      if len(gpus) >= parallel:
        share = len(gpus) // parallel
        slots.append(Slot(i, mine, tuple(gpus[i * share:(i + 1) * share])))
      else:
        slots.append(Slot(i, mine, (gpus[i % len(gpus)],), -(-parallel // len(gpus))))
    else:
      slots.append(Slot(i, mine))
  return slots


def _core_list(cores: Sequence[int]) -> str:
  """0,1,2,3,6 -> '0-3,6' (the notation of taskset and /proc/PID/status)."""
  out, run = [], []
  for c in sorted(cores):
    if run and c == run[-1] + 1:
      run.append(c)
      continue
    if run:
      out.append(f'{run[0]}-{run[-1]}' if len(run) > 1 else str(run[0]))
    run = [c]
  if run:
    out.append(f'{run[0]}-{run[-1]}' if len(run) > 1 else str(run[0]))
  return ','.join(out)


def shell_command(command: Sequence[str], slot: Slot | None) -> str:
  """The command as one shell line, with the slot's environment and CPU pinning."""
  prefix = []
  if slot is not None:
    prefix += [f'{k}={shlex.quote(v)}' for k, v in slot.env().items()]
    if slot.cores:
      prefix += ['taskset', '-c', _core_list(slot.cores)]
  return ' '.join(prefix + [shlex.quote(c) for c in command])


# ---------------------------------------------------------------------------------------------
# Running points: one child process per point, pinned to its slot


def _find_prctl():
  try:
    return ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):  # not Linux
    return None


_PRCTL = _find_prctl()  # looked up once, before any fork: the child may only call it
_PR_SET_PDEATHSIG = 1
_STOP_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # gptjax.train's exit after a signal
EXIT_ERROR = 2  # a command's exit after its one-line `error: ...` (cli.EXIT_USAGE)


def _child_setup(cores: tuple[int, ...], parent: int) -> Callable[[], None]:
  """Runs in each child between fork and exec: pins it to its cores and asks the kernel to send it
  SIGTERM if the sweep dies (even by SIGKILL), so every run still checkpoints and stops."""
  def setup():
    if cores:
      os.sched_setaffinity(0, cores)
    if _PRCTL is not None:
      _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the sweep died before the line above
      os.kill(os.getpid(), signal.SIGTERM)
  return setup


@dataclasses.dataclass
class _Job:
  """A running child: the state of the run loop, owned by `run_points` alone."""
  point: sw.Point
  slot: Slot
  phase: str  # 'train' or 'evaluate'
  proc: subprocess.Popen
  started: float  # time.monotonic()
  started_at: str  # local time, ISO 8601
  started_unix: float
  log_offset: int
  out_path: str | None = None
  cores: str = ''
  xla_threads: int = 0


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def _launch(command: list[str], slot: Slot, directory: str, point: sw.Point, phase: str) -> _Job:
  log_path = os.path.join(directory, sw.TRAIN_LOG)
  with open(log_path, 'a', encoding='utf-8') as log:
    log.write(f'--- {_now()} {phase} on {slot.describe()}: {shell_command(command, slot)}\n')
    offset = log.tell()
  out_path = os.path.join(directory, f'.{sw.EVALUATION}.out') if phase == 'evaluate' else None
  log = open(log_path, 'a', encoding='utf-8')
  out = open(out_path, 'w', encoding='utf-8') if out_path else log
  try:
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                            env={**os.environ, **slot.env()}, start_new_session=True,
                            preexec_fn=_child_setup(slot.cores, os.getpid()))
  finally:
    log.close()
    if out_path:
      out.close()
  return _Job(point, slot, phase, proc, time.monotonic(), _now(), time.time(), offset, out_path)


def _observe(job: _Job) -> None:
  """Reads what the child really got: its CPU affinity, and the threads of XLA's CPU pool."""
  pid = job.proc.pid
  try:
    with open(f'/proc/{pid}/status', encoding='utf-8') as f:
      for line in f:
        if line.startswith('Cpus_allowed_list:'):
          job.cores = line.split(':', 1)[1].strip()
    threads = 0
    for tid in os.listdir(f'/proc/{pid}/task'):
      with open(f'/proc/{pid}/task/{tid}/comm', encoding='utf-8') as f:
        threads += f.read().strip() == 'tf_XLAEigen'
    job.xla_threads = max(job.xla_threads, threads)
  except OSError:  # not Linux, or the child just ended
    pass


def _error_of(directory: str, offset: int) -> str:
  """The one-line error a child printed (its last `error: ...` line, else its last line)."""
  try:
    with open(os.path.join(directory, sw.TRAIN_LOG), encoding='utf-8', errors='replace') as f:
      f.seek(offset)
      lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  except OSError:
    return ''
  errors = [line for line in lines if line.startswith('error: ')]
  text = errors[-1][len('error: '):] if errors else (lines[-1] if lines else '')
  return text if len(text) <= 300 else text[:297] + '...'


def _record_attempt(directory: str, job: _Job, exit_code: int, status: str, error: str) -> None:
  record = {'phase': job.phase, 'runner': 'sweep', 'host': socket.gethostname(), 'start': job.started_at,
            'start_unix': round(job.started_unix, 3), 'wall_s': round(time.monotonic() - job.started, 3), 'slot': job.slot.index,
            'cores': job.cores or _core_list(job.slot.cores), 'xla_threads': job.xla_threads,
            'gpus': ','.join(job.slot.gpus), 'exit_code': exit_code, 'status': status, 'error': error}
  with open(os.path.join(directory, sw.ATTEMPTS), 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')


def _last_record(path: str) -> dict:
  """The last complete line of a metrics.jsonl that has a loss, read from the file's tail."""
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - 8192))
      lines = f.read().decode('utf-8', errors='replace').split('\n')[:-1]
  except OSError:
    return {}
  for line in reversed(lines):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if 'train_loss' in record or 'val_loss' in record:
      return record
  return {}


class _Signals:
  """Counts SIGINT/SIGTERM sent to the sweep; the run loop forwards each one to its children."""

  def __init__(self):
    self.received: list[int] = []
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._previous[sig] = signal.signal(sig, lambda signum, frame: self.received.append(signum))
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Stopped(Exception):
  """The sweep was stopped by a signal after every child checkpointed and exited."""

  def __init__(self, signum: int):
    super().__init__(f'stopped by signal {signum}')
    self.signum = signum


def run_points(sweep: sw.Sweep, workdir: str, slots: Sequence[Slot], *, retry_failed: bool = False,
               progress: bool = True, on_change: Callable[[], None] | None = None,
               log: Callable[[str], None] = print) -> dict[str, sw.PointState]:
  """Runs every point that is not done, len(slots) at a time, each in its own slot; returns each
  point's final state. Training is followed by `gptjax.evaluate` in the same slot.

  On SIGINT/SIGTERM every child gets the signal (each checkpoints and exits), nothing new starts,
  and `Stopped` is raised once all have exited. on_change() runs after each child ends.
  """
  from tqdm import tqdm

  sw.write_sweep_record(sweep, workdir)
  states = {p.name: sw.inspect_point(p, sw.point_dir(workdir, p)) for p in sweep.points}
  runnable = ('pending', 'interrupted', 'trained') + (('failed',) if retry_failed else ())
  todo = [p for p in sweep.points if states[p.name].kind in runnable]
  counts = {}
  for s in states.values():
    counts[s.kind] = counts.get(s.kind, 0) + 1
  log(f'{len(sweep.points)} point{"s" if len(sweep.points) != 1 else ""}: ' + ', '.join(f'{n} {k}' for k, n in counts.items())
      + f'; running {len(todo)} on {len(slots)} slot(s): ' + ' | '.join(s.describe() for s in slots))
  for p in sweep.points:
    state = states[p.name]
    if state.kind == 'running':
      log(f'  {p.name}: running elsewhere ({state.detail}); skipped')
    elif state.kind == 'failed' and not retry_failed:
      log(f'  {p.name}: failed before ({state.detail}); pass --retry_failed to run it again')

  monitor, tqdm.monitor_interval = tqdm.monitor_interval, 0  # no monitor thread while children are forked
  overall = tqdm(total=len(todo), unit='point', disable=not progress, dynamic_ncols=True, position=0)
  bars = {}
  free, jobs, forwarded = list(slots), [], 0
  say = tqdm.write if progress else log

  def start(point, slot, phase):
    directory = sw.point_dir(workdir, point)
    if phase == 'train':
      sw.write_point_record(sweep, point, workdir)
      command = sw.train_command(sweep, point, workdir)
      max_steps = config_lib.resolve(point.config).train.max_steps
      bars[slot.index] = tqdm(total=max_steps, initial=states[point.name].step, position=slot.index + 1,
                              desc=point.name[:40], unit='step', leave=False, disable=not progress,
                              dynamic_ncols=True)
    else:
      command = sw.evaluate_command(directory)
    jobs.append(_launch(command, slot, directory, point, phase))
    if phase == 'train':
      say(f'{point.name}: {"resuming at step " + str(states[point.name].step) if states[point.name].step else "starting"}'
          f' on {slot.describe()}')

  def finish(job, rc):
    point, directory = job.point, sw.point_dir(workdir, job.point)
    jobs.remove(job)
    if job.phase == 'train':
      bar = bars.pop(job.slot.index, None)
      if bar is not None:
        bar.close()
      if rc == 0:
        _record_attempt(directory, job, rc, 'trained', '')
        steps = sw.checkpoint_steps(directory)
        states[point.name] = sw.PointState('trained', steps[-1] if steps else 0)
        if not signals.received:
          start(point, job.slot, 'evaluate')
          return
      elif rc in _STOP_CODES or rc < 0 or (signals.received and rc != EXIT_ERROR):  # a 2nd Ctrl-C: exit 1
        error = _error_of(directory, job.log_offset) or f'killed by signal {-rc}'
        _record_attempt(directory, job, rc, 'interrupted', error)
        steps = sw.checkpoint_steps(directory)
        states[point.name] = sw.PointState('interrupted', steps[-1] if steps else 0, error)
        say(f'{point.name}: interrupted ({error})')
      else:
        holder = sw.lock_holder(directory)
        error = _error_of(directory, job.log_offset) or f'exit status {rc}'
        status = 'running' if holder else 'failed'
        _record_attempt(directory, job, rc, status, error)
        states[point.name] = sw.PointState(status, detail=sw.holder_text(holder) if holder else error)
        say(f'{point.name}: ' + (f'running elsewhere ({sw.holder_text(holder)})' if holder else f'failed: {error}'))
        overall.update(1)
    else:
      evaluation = _finish_evaluation(job, rc, directory, states[point.name].step)
      if evaluation is not None:
        _record_attempt(directory, job, rc, 'done', '')
        states[point.name] = sw.PointState('done', states[point.name].step)
        say(f'{point.name}: done, ' + ', '.join(f'{k} {evaluation[k]:.4f}' for k in ('loss', 'bits_per_byte')
                                                if isinstance(evaluation.get(k), float)))
      else:
        error = 'evaluate: ' + (_error_of(directory, job.log_offset) or f'exit status {rc}')
        status = 'interrupted' if rc in _STOP_CODES or rc < 0 or (signals.received and rc != EXIT_ERROR) \
            else 'failed'
        _record_attempt(directory, job, rc, status, error)
        states[point.name] = sw.PointState(status, states[point.name].step, error)
        say(f'{point.name}: {status} ({error})')
      overall.update(1)
    free.append(job.slot)
    free.sort(key=lambda s: s.index)
    if on_change is not None:
      on_change()

  with _Signals() as signals:
    try:
      while todo or jobs:
        if len(signals.received) > forwarded:  # forward each signal once to every child
          for job in jobs:
            try:
              os.kill(job.proc.pid, signals.received[-1])
            except ProcessLookupError:
              pass
          if not forwarded:
            say(f'stopping: {len(jobs)} run(s) save a checkpoint and exit; run the same command again to resume')
          forwarded = len(signals.received)
          todo = []
        while todo and free:
          point = todo.pop(0)
          state = sw.inspect_point(point, sw.point_dir(workdir, point))  # another sweep may have taken it
          states[point.name] = state
          if state.kind == 'running':
            say(f'{point.name}: running elsewhere ({state.detail}); skipped')
            overall.update(1)
            continue
          start(point, free.pop(0), 'evaluate' if state.kind == 'trained' else 'train')
        for job in list(jobs):
          rc = job.proc.poll()
          if rc is None:
            _observe(job)
            if job.phase == 'train' and job.slot.index in bars:
              record = _last_record(os.path.join(sw.point_dir(workdir, job.point), 'metrics.jsonl'))
              bar = bars[job.slot.index]
              if record and record['step'] > bar.n:
                bar.update(record['step'] - bar.n)
                bar.set_postfix({k: f'{record[k]:.4f}' for k in ('train_loss', 'val_loss') if k in record})
          else:
            finish(job, rc)
        if todo or jobs:
          time.sleep(0.2)
    finally:
      for bar in bars.values():
        bar.close()
      overall.close()
      tqdm.monitor_interval = monitor
    if signals.received:
      raise Stopped(signals.received[0])
  return states


def _finish_evaluation(job: _Job, rc: int, directory: str, step: int) -> dict | None:
  """gptjax.evaluate's JSON line, stored with the step it evaluated as sw.EVALUATION; None if it failed."""
  from gptjax.data import atomic_write
  try:
    with open(job.out_path, encoding='utf-8') as f:
      lines = [line for line in f.read().splitlines() if line.strip()]
    os.unlink(job.out_path)
  except OSError:
    lines = []
  if rc != 0 or not lines:
    return None
  try:
    result = json.loads(lines[-1])
  except ValueError:
    return None
  result = {'step': step, **result}
  atomic_write(os.path.join(directory, sw.EVALUATION), json.dumps(result) + '\n')
  return result


# ---------------------------------------------------------------------------------------------
# Without running: the commands (--dry_run) and a SLURM job array (--slurm)


def dry_run_lines(sweep: sw.Sweep, workdir: str, slots: Sequence[Slot]) -> list[str]:
  """Each point's exact command, as `--parallel` would run it in slot (index mod parallel)."""
  lines = []
  for point in sweep.points:
    state = sw.inspect_point(point, sw.point_dir(workdir, point))
    slot = slots[point.index % len(slots)]
    lines.append(f'# point {point.index}: {point.name} ({state.kind}{", " + state.detail if state.detail else ""})')
    lines.append(shell_command(sw.train_command(sweep, point, workdir), slot))
  return lines


def slurm_script(sweep: sw.Sweep, workdir: str, slot: Slot, indices: Sequence[int], options: Sequence[str] = (),
                 invocation: str = '') -> str:
  """A SLURM job-array script whose task i trains point i, then evaluates it, like the local runner
  (train.log, attempts.jsonl and evaluate.json in the point's directory). Rerunning the sweep
  command afterwards finds the points done and writes the summary."""
  cores = max(len(slot.cores), 1)
  python = shlex.quote(sw.python_executable())
  lines = ['#!/bin/bash',
           f'# Written by: {invocation}' if invocation else '# Written by gptjax.sweep --slurm',
           f'# Submit with: sbatch {shlex.quote(os.path.join(workdir, "sweep.slurm"))}',
           '# Task i trains point i of the sweep, then evaluates it; afterwards the same sweep command',
           '# (without --slurm) finds the points done and writes summary.csv, summary.md and plots/.',
           f'#SBATCH --job-name={re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(os.path.abspath(workdir)))}',
           f'#SBATCH --array={_index_ranges(indices)}',
           '#SBATCH --ntasks=1',
           f'#SBATCH --cpus-per-task={cores}',
           *([f'#SBATCH --gpus-per-task={len(slot.gpus)}'] if slot.gpus else []),
           f'#SBATCH --output={shlex.quote(os.path.join(os.path.abspath(workdir), "slurm-%A_%a.out"))}',
           *[f'#SBATCH {o}' for o in options],
           'set -u',
           f'cd {shlex.quote(os.getcwd())}',
           'i=${SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID to the index of the point to run}',
           'case "$i" in']
  for point in sweep.points:
    command = sw.train_command(sweep, point, workdir)
    lines.append(f'  {point.index}) dir={shlex.quote(sw.point_dir(workdir, point))}; '
                 f'cmd=({" ".join(shlex.quote(c) for c in command)}) ;;')
  lines += ['  *) echo "no point $i in this sweep" >&2; exit 2 ;;',
            'esac',
            f'# {cores} core(s) per point: the losses depend in their last bits on the number of cores XLA:CPU',
            '# uses, so a task given more (e.g. run by hand outside SLURM) pins itself to its share.',
            *[f'export {name}={cores}' for name in THREAD_ENV],
            f'mine=$({python} -c \'import os, sys; print(",".join(map(str, sorted(os.sched_getaffinity(0))'
            f'[:int(sys.argv[1])])))\' {cores})',
            'pin=(); if command -v taskset >/dev/null; then pin=(taskset -c "$mine"); fi',
            'mkdir -p "$dir"',
            'echo "--- $(date -Iseconds) train, SLURM job ${SLURM_JOB_ID:-none} task $i on cores $mine: ${cmd[*]}"'
            ' >> "$dir/train.log"',
            'start=$(date -Iseconds); t0=$SECONDS',
            '${pin[@]+"${pin[@]}"} "${cmd[@]}" >> "$dir/train.log" 2>&1; rc=$?',
            'status=trained; [ $rc -eq 0 ] || status=failed; '
            f'[ $rc -eq {128 + signal.SIGTERM} ] || [ $rc -eq {128 + signal.SIGINT} ] && status=interrupted',
            'err=$(grep "^error: " "$dir/train.log" | tail -n 1 | cut -c 8- | tr -d \'"\\\\\')',
            '[ $rc -eq 0 ] && err=""',
            'printf \'{"phase": "train", "runner": "slurm", "job": "%s", "host": "%s", "start": "%s", "wall_s": %s, '
            '"cores": "%s", "gpus": "%s", "exit_code": %s, "status": "%s", "error": "%s"}\\n\' '
            '"${SLURM_JOB_ID:-}" "$(hostname)" "$start" $((SECONDS - t0)) "$mine" "${CUDA_VISIBLE_DEVICES:-}" '
            '$rc "$status" "$err" >> "$dir/attempts.jsonl"',
            '[ $rc -eq 0 ] || exit $rc',
            'step=$(ls "$dir/checkpoints" | grep -E \'^[0-9]+$\' | sort -n | tail -n 1)',
            f'${{pin[@]+"${{pin[@]}}"}} {" ".join(shlex.quote(c) for c in sw.evaluate_command("DIR")[:-1])} --workdir="$dir" '
            f'> "$dir/.{sw.EVALUATION}.out" 2>> "$dir/train.log" || exit $?',
            f'sed "s/^{{/{{\\"step\\": $step, /" "$dir/.{sw.EVALUATION}.out" | tail -n 1 > "$dir/{sw.EVALUATION}"',
            f'rm -f "$dir/.{sw.EVALUATION}.out"', '']
  return '\n'.join(lines)


def _index_ranges(indices: Sequence[int]) -> str:
  return _core_list(indices).replace(' ', '')


def child_devices(slot: Slot) -> int:
  """How many JAX devices a point's process will see (for checking batch divisibility up front)."""
  if slot.gpus:
    return len(slot.gpus)
  forced = re.search(r'--xla_force_host_platform_device_count=(\d+)', os.environ.get('XLA_FLAGS', ''))
  return int(forced.group(1)) if forced else 1

