"""Settings chosen from what the CPU reports, made by the commands before JAX starts.

    python -m gptjax.train ...
      main() ──read_cpu()──▶ CpuInfo (vendor, model, instruction sets, cores)
             ──choose(cpu, environ, ...)──▶ Choices     a pure function: no measurement, no JAX
             ──apply(choices)──▶ XLA_FLAGS, glibc malloc settings; one log line; recorded in the
                                  workdir's provenance.jsonl ('cpu_choices')

What is chosen, and why (README "CPU speed" has the measurements):

  devices  One XLA CPU device per physical core (`--xla_force_host_platform_device_count`), so the
           data-parallel step runs one batch shard per core instead of spreading every small matmul
           over all cores. The global batch is the same for any device count, so the losses agree
           up to the order of the gradient sums. Only where the batch splits evenly (the largest
           divisor of train.batch_size up to the core count), the replicated train state fits in a
           quarter of the memory, dropout is 0 (each device draws its own dropout masks, so another
           count would give other masks), train.devices is 0 (all), and it is one host.
  xla      `--xla_cpu_experimental_ynn_fusion_type=-reduce` on x86-64 with AVX2 or AVX-512: XLA's
           YNNPACK reduction fusions run the softmax backward's row sums (multiply + reduce over 64
           keys) several times slower than XLA's own loop fusion; YNNPACK matmuls stay on. Kept to
           the instruction sets it was measured on; XLA's defaults elsewhere.
  malloc   glibc only: keep freed blocks up to 256 MiB in the heap (mallopt M_MMAP_THRESHOLD /
           M_TRIM_THRESHOLD) instead of returning them to the system after each call. XLA allocates
           a step's temporaries (46 MiB for nanoGPT's CPU recipe) per call; glibc would map them
           fresh each time and the kernel zero-fills every page again (15 ms of system time per
           call there). The arithmetic is unchanged.

Whatever the user set wins: an `XLA_FLAGS` in the environment, even empty, leaves the XLA flags
and the device count alone (so does `JAX_NUM_CPU_DEVICES`); `GLIBC_TUNABLES` or glibc's
`MALLOC_*_` variables leave malloc alone; a config that pins train.devices keeps its devices; and
`--nocpu_auto` turns every choice off. bfloat16 stays opt-in (model.dtype): it changes results.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import platform
from typing import Mapping

DEVICE_FLAG = '--xla_force_host_platform_device_count'
YNN_REDUCE_OFF = '--xla_cpu_experimental_ynn_fusion_type=-reduce'
MALLOC_KEEP_BYTES = 256 << 20  # freed blocks up to this size stay in the heap for the next call
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_MALLOC_ENV = ('GLIBC_TUNABLES', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_',
               'MALLOC_ARENA_MAX')


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  """What the CPU reports: vendor ('AuthenticAMD', 'GenuineIntel', ...), model name, instruction-set
  flags (as /proc/cpuinfo spells them), physical cores this process may run on, machine ('x86_64')."""

  vendor: str
  model: str
  flags: frozenset
  cores: int
  machine: str = 'x86_64'
  memory_bytes: int = 0  # physical memory (0 = unknown)

  @property
  def isa(self) -> str:
    """The widest vector instruction set: 'avx512+amx', 'avx512+bf16', 'avx512', 'avx2' or 'baseline'."""
    f = self.flags
    if 'avx512f' in f:
      if 'amx_tile' in f:
        return 'avx512+amx'
      return 'avx512+bf16' if 'avx512_bf16' in f else 'avx512'
    return 'avx2' if 'avx2' in f and 'fma' in f else 'baseline'

  def describe(self) -> str:
    return f'{self.model or self.vendor or self.machine} ({self.isa}, {self.cores} core{"s" * (self.cores != 1)})'


def parse_cpuinfo(text: str, allowed_cpus=None, machine: str = 'x86_64', memory_bytes: int = 0) -> CpuInfo:
  """CpuInfo from the text of /proc/cpuinfo; allowed_cpus: the logical CPU numbers this process may
  use (None = all). Physical cores are the distinct (physical id, core id) pairs among them, so SMT
  siblings count once; without those fields every logical CPU counts as a core."""
  blocks = [b for b in text.split('\n\n') if b.strip()]
  vendor = model = ''
  flags: frozenset = frozenset()
  cores, logical = set(), 0
  for block in blocks:
    fields = {}
    for line in block.splitlines():
      key, sep, value = line.partition(':')
      if sep:
        fields[key.strip()] = value.strip()
    if 'processor' not in fields:
      continue
    try:
      number = int(fields['processor'])
    except ValueError:  # e.g. ARM's "Processor : AArch64 ..." summary line
      continue
    if allowed_cpus is not None and number not in allowed_cpus:
      continue
    logical += 1
    vendor = vendor or fields.get('vendor_id', '')
    model = model or fields.get('model name', '')
    flags = flags or frozenset(fields.get('flags', fields.get('Features', '')).split())
    if 'physical id' in fields and 'core id' in fields:
      cores.add((fields['physical id'], fields['core id']))
  n = len(cores) if cores and len(cores) <= logical else logical
  return CpuInfo(vendor=vendor, model=model, flags=flags, cores=max(n, 1), machine=machine,
                 memory_bytes=memory_bytes)


def read_cpu() -> CpuInfo:
  """This machine's CpuInfo (Linux: /proc/cpuinfo and the process's CPU affinity)."""
  allowed = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else None
  try:
    memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    memory = 0
  try:
    with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
      return parse_cpuinfo(f.read(), allowed, platform.machine(), memory)
  except OSError:  # not Linux: no instruction sets known, so only the core count drives choices
    n = len(allowed) if allowed else (os.cpu_count() or 1)
    return CpuInfo(vendor='', model=platform.processor(), flags=frozenset(), cores=n,
                   machine=platform.machine(), memory_bytes=memory)


@dataclasses.dataclass(frozen=True)
class Choices:
  """What `choose` decided. devices: XLA CPU devices to create (None = JAX's default, 1); xla_flags:
  flags to add to XLA_FLAGS; malloc_keep_bytes: the glibc thresholds to set (None = leave malloc
  alone); notes: why a choice was left out (one short phrase each)."""

  cpu: str
  devices: int | None
  xla_flags: tuple
  malloc_keep_bytes: int | None
  notes: tuple = ()

  def summary(self) -> str:
    """One line for the log."""
    parts = [f'{self.devices} XLA devices (one per core)' if self.devices else '1 XLA device',
             'XLA flags ' + ' '.join(self.xla_flags) if self.xla_flags else 'XLA default flags',
             f'malloc keeps freed blocks < {self.malloc_keep_bytes >> 20} MiB' if self.malloc_keep_bytes
             else 'malloc as is']
    return f'cpu: {self.cpu}: ' + ', '.join(parts) + ''.join(f'; {n}' for n in self.notes)

  def to_dict(self) -> dict:
    return {'cpu': self.cpu, 'devices': self.devices, 'xla_flags': list(self.xla_flags),
            'malloc_keep_bytes': self.malloc_keep_bytes, 'notes': list(self.notes)}


@functools.lru_cache(maxsize=None)
def last_level_cache_bytes(sysfs: str = '/sys/devices/system/cpu/cpu0/cache') -> int | None:
  """Size of the largest cache level CPU 0 reports (L3 on x86 servers), or None where the kernel does
  not say. Decoding sizes its row groups by it (`decode.plan_groups`)."""
  best = None
  try:
    entries = os.listdir(sysfs)
  except OSError:
    return None
  for entry in sorted(entries):
    try:
      with open(os.path.join(sysfs, entry, 'level')) as f:
        level = int(f.read())
      with open(os.path.join(sysfs, entry, 'size')) as f:
        text = f.read().strip().upper()
    except (OSError, ValueError):
      continue
    scale = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}.get(text[-1:], 1)
    try:
      size = int(text.rstrip('KMG')) * scale
    except ValueError:
      continue
    if best is None or level > best[0]:
      best = (level, size)
  return best[1] if best else None


def launched_as_one_of_several(environ: Mapping[str, str]) -> bool:
  """Whether this process is one of a multi-process run (JAX's variables, or a SLURM step of several
  tasks), read from the environment before JAX starts."""
  return bool(environ.get('JAX_COORDINATOR_ADDRESS')) or int(environ.get('SLURM_NTASKS') or 1) > 1


def is_lead_process(environ: Mapping[str, str]) -> bool:
  """Process 0 of a multi-process run (or the only process), before JAX starts."""
  return (environ.get('JAX_PROCESS_ID') or environ.get('SLURM_PROCID') or '0') == '0'


def choose(cpu: CpuInfo, environ: Mapping[str, str], *, batch_size: int = 0, train_devices: int = 0,
           dropout: float = 0.0, state_bytes: int = 0, auto: bool = True, libc: str = 'glibc',
           strategy: str = 'pmap') -> Choices:
  """The settings for this CPU: a pure function of its arguments (see the module docstring).

  batch_size: the global batch the devices split (0: a command that runs one device, so no device
  count is chosen); train_devices: the config's train.devices (0 = all); state_bytes: the train
  state one device holds (parameters and optimizer moments); libc: 'glibc' or another C library;
  strategy: the config's parallel.strategy (several devices are chosen for 'pmap' only: a mesh the
  user lays out is the user's, and jit over several CPU devices can stall, see the notes on the stack).
  """
  if not auto:
    return Choices(cpu.describe(), None, (), None, ('automatic choices off (--nocpu_auto)',))
  notes = []
  xla_explicit = 'XLA_FLAGS' in environ
  devices = None
  if batch_size:
    why_not = (
        'XLA_FLAGS is set' if xla_explicit else
        'JAX_NUM_CPU_DEVICES is set' if 'JAX_NUM_CPU_DEVICES' in environ else
        'several processes' if launched_as_one_of_several(environ) else
        f'train.devices={train_devices} is set' if train_devices else
        f'parallel.strategy={strategy}' if strategy != 'pmap' else
        f'dropout {dropout} draws masks per device' if dropout > 0 else None)
    if why_not is None:
      limit = cpu.cores
      if state_bytes and cpu.memory_bytes:
        limit = min(limit, max(1, cpu.memory_bytes // 4 // state_bytes))
      devices = max(d for d in range(1, limit + 1) if batch_size % d == 0)
      if devices < cpu.cores:
        notes.append(f'{devices} of {cpu.cores} cores get a device (batch {batch_size}'
                     + (', memory' if limit < cpu.cores else '') + ')')
      devices = devices if devices > 1 else None
    elif cpu.cores > 1:
      notes.append(f'one device ({why_not})')
  flags = ()
  if xla_explicit:
    notes.append('XLA_FLAGS as given')
  elif cpu.machine in ('x86_64', 'AMD64') and cpu.isa != 'baseline':
    flags = (YNN_REDUCE_OFF,)
  malloc = None
  if libc == 'glibc' and not any(k in environ for k in _MALLOC_ENV):
    malloc = MALLOC_KEEP_BYTES
  return Choices(cpu.describe(), devices, flags, malloc, tuple(notes))


def apply(choices: Choices, environ=None) -> None:
  """Puts the choices into effect; call it before JAX initialises its backends (the first JAX
  computation or device query). Sets XLA_FLAGS only where the user did not (choose() leaves it
  alone otherwise), and glibc's malloc thresholds."""
  environ = os.environ if environ is None else environ
  flags = list(choices.xla_flags) + ([f'{DEVICE_FLAG}={choices.devices}'] if choices.devices else [])
  if flags and 'XLA_FLAGS' not in environ:
    environ['XLA_FLAGS'] = ' '.join(flags)
  if choices.malloc_keep_bytes:
    libc = ctypes.CDLL(None)
    # Both calls return 1 on success; an older glibc that refuses a threshold above 32 MiB keeps
    # its defaults, which only costs speed.
    libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(choices.malloc_keep_bytes))
    libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2 * choices.malloc_keep_bytes))


def libc_name() -> str:
  name, _ = platform.libc_ver()
  return name or 'unknown'


def define_flag() -> None:
  """--cpu_auto / --nocpu_auto for a command that calls `configure`."""
  from absl import flags
  flags.DEFINE_bool('cpu_auto', True, 'Choose XLA:CPU devices, flags and malloc settings from the CPU '
                    '(see gptjax/cpu.py); an XLA_FLAGS you set is always kept.')


def configure(*, batch_size: int = 0, train_devices: int = 0, dropout: float = 0.0, state_bytes: int = 0,
              auto: bool = True, log=print, strategy: str = 'pmap') -> Choices:
  """What a command calls first, before any JAX computation: reads the CPU, chooses, applies, logs
  one line; returns the choices (for the run record). Where JAX already started its backends in
  this process (a command's main() called from a notebook, say), XLA flags and device counts can no
  longer change: nothing is chosen, and the line says why."""
  from jax._src import xla_bridge  # importing jax does not start its backends; a computation does
  started = xla_bridge.backends_are_initialized()
  choices = choose(read_cpu(), os.environ, batch_size=batch_size, train_devices=train_devices,
                   dropout=dropout, state_bytes=state_bytes, auto=auto and not started, libc=libc_name(),
                   strategy=strategy)
  if started and auto:
    choices = dataclasses.replace(choices, notes=('JAX had already started in this process: nothing chosen',))
  apply(choices)
  log(choices.summary())
  return choices


def state_bytes_estimate(model: Mapping, tokenizer: str = 'byte', bpe_vocab_size: int = 0) -> int:
  """Bytes of one device's train state (float32 parameters and AdamW's two moments) for a config's
  `model` section, before the tokenizer exists: 12 n_layer n_embd^2 + (vocab + block_size) n_embd
  parameters; vocab 0 is guessed from the tokenizer kind."""
  vocab = model['vocab_size'] or {'bpe': bpe_vocab_size, 'gpt2': 50257}.get(tokenizer, 256)
  n = 12 * model['n_layer'] * model['n_embd'] ** 2 + (vocab + model['block_size']) * model['n_embd']
  return 3 * 4 * n
