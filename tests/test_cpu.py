"""The CPU choices (gptjax/cpu.py): what each CPU kind gets, what a user's settings keep, and that
every automatic choice leaves the training losses as they were."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import cpu
from gptjax.matmul import matmul

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'cpuinfo')
GiB = 1 << 30


def kind(name, **kw):
  with open(os.path.join(FIXTURES, name), encoding='utf-8') as f:
    return cpu.parse_cpuinfo(f.read(), memory_bytes=kw.pop('memory_bytes', 16 * GiB), **kw)


# The kinds seen so far and what the README's "CPU speed" table says each one gets (recipe: batch 12).
KINDS = {
    'amd_epyc_avx2.txt': ('AuthenticAMD', 'AMD EPYC 7B13', 'avx2'),
    'amd_epyc_avx512_bf16.txt': ('AuthenticAMD', 'AMD EPYC', 'avx512+bf16'),
    'intel_xeon_spr_amx.txt': ('GenuineIntel', 'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz', 'avx512+amx'),
}


@pytest.mark.parametrize('name', sorted(KINDS))
def test_each_kind_gets_the_documented_choices(name):
  info = kind(name)
  vendor, model, isa = KINDS[name]
  assert (info.vendor, info.model, info.isa, info.cores) == (vendor, model, isa, 2)
  choices = cpu.choose(info, {}, batch_size=12)
  assert choices == cpu.Choices(cpu=f'{model} ({isa}, 2 cores)', devices=2,
                                xla_flags=('--xla_cpu_experimental_ynn_fusion_type=-reduce',),
                                malloc_keep_bytes=256 << 20, notes=())
  env = {}
  cpu.apply(dataclass_replace(choices, malloc_keep_bytes=None), env)
  assert env == {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=-reduce '
                              '--xla_force_host_platform_device_count=2'}


def dataclass_replace(obj, **changes):
  import dataclasses
  return dataclasses.replace(obj, **changes)


@pytest.mark.parametrize('flags', ['', '--xla_cpu_use_onednn=true'])
def test_an_explicit_xla_flags_is_left_alone(flags):
  info = kind('amd_epyc_avx512_bf16.txt')
  choices = cpu.choose(info, {'XLA_FLAGS': flags}, batch_size=12)
  assert choices.devices is None and choices.xla_flags == ()
  assert 'XLA_FLAGS as given' in choices.notes and 'one device (XLA_FLAGS is set)' in choices.notes
  assert choices.malloc_keep_bytes == 256 << 20  # malloc has its own switches (GLIBC_TUNABLES, MALLOC_*_)
  env = {'XLA_FLAGS': flags}
  cpu.apply(dataclass_replace(choices, malloc_keep_bytes=None), env)
  assert env == {'XLA_FLAGS': flags}


def test_what_the_user_set_wins():
  info = kind('intel_xeon_spr_amx.txt')
  assert cpu.choose(info, {'JAX_NUM_CPU_DEVICES': '1'}, batch_size=12).devices is None
  assert cpu.choose(info, {}, batch_size=12, train_devices=1).devices is None
  assert cpu.choose(info, {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, batch_size=12).malloc_keep_bytes is None
  assert cpu.choose(info, {'MALLOC_ARENA_MAX': '2'}, batch_size=12).malloc_keep_bytes is None
  off = cpu.choose(info, {}, batch_size=12, auto=False)
  assert (off.devices, off.xla_flags, off.malloc_keep_bytes) == (None, (), None)


def test_devices_only_where_results_stay_equal_and_everything_fits():
  info = kind('amd_epyc_avx2.txt')
  # Dropout draws masks per device: another device count would give other masks.
  assert cpu.choose(info, {}, batch_size=12, dropout=0.1).devices is None
  assert cpu.choose(info, {}, batch_size=9).devices is None  # 9 rows do not split over 2 cores
  assert cpu.choose(info, {}, batch_size=0).devices is None  # a command that runs one device
  assert cpu.choose(info, {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, batch_size=12).devices is None
  assert cpu.choose(info, {'SLURM_NTASKS': '2'}, batch_size=12).devices is None  # one of 2 SLURM tasks
  assert cpu.choose(info, {'SLURM_NTASKS': '1'}, batch_size=12).devices == 2  # a one-task job
  # Two replicas of a 6 GiB train state do not fit in a quarter of 16 GiB.
  assert cpu.choose(info, {}, batch_size=12, state_bytes=6 * GiB).devices is None
  assert cpu.choose(info, {}, batch_size=12, state_bytes=1 * GiB).devices == 2
  # A mesh is laid out by the user (and jit over several CPU devices can stall): one device.
  assert cpu.choose(info, {}, batch_size=12, strategy='mesh').devices is None
  assert cpu.choose(info, {}, batch_size=12, libc='musl').malloc_keep_bytes is None


def test_only_process_0_of_a_multi_process_run_reports():
  assert cpu.is_lead_process({}) and cpu.is_lead_process({'SLURM_PROCID': '0'})
  assert not cpu.is_lead_process({'JAX_PROCESS_ID': '1'}) and not cpu.is_lead_process({'SLURM_PROCID': '3'})


def test_cores_count_physical_cores_this_process_may_use():
  text = open(os.path.join(FIXTURES, 'intel_xeon_spr_amx.txt'), encoding='utf-8').read()
  # Two logical CPUs per core (SMT): 4 processors on cores 0, 1, 0, 1 are 2 cores.
  blocks = [b for b in text.split('\n\n') if b.strip()]
  smt = [b.replace('processor\t: 0', f'processor\t: {i}').replace('processor\t: 1', f'processor\t: {i}')
         .replace('core id\t\t: 1', f'core id\t\t: {i % 2}').replace('core id\t\t: 0', f'core id\t\t: {i % 2}')
         for i, b in enumerate(blocks * 2)]
  assert cpu.parse_cpuinfo('\n\n'.join(smt)).cores == 2
  assert cpu.parse_cpuinfo(text, allowed_cpus={1}).cores == 1
  six = cpu.CpuInfo('GenuineIntel', 'x', frozenset({'avx2', 'fma'}), cores=6, memory_bytes=64 * GiB)
  assert cpu.choose(six, {}, batch_size=12).devices == 6
  assert cpu.choose(six, {}, batch_size=16).devices == 4  # the largest divisor of the batch up to 6
  arm = cpu.CpuInfo('', 'Neoverse', frozenset({'asimd'}), cores=2, machine='aarch64')
  assert cpu.choose(arm, {}, batch_size=12).xla_flags == ()  # not measured there: XLA's defaults


def test_configure_after_jax_started_changes_nothing():
  """main() called in a process where JAX already runs: no flag could take effect, so none is set."""
  jnp.zeros(1).block_until_ready()  # the backends start (conftest's 8 devices)
  before, lines = dict(os.environ), []
  choices = cpu.configure(batch_size=12, log=lines.append)
  assert (choices.devices, choices.xla_flags, choices.malloc_keep_bytes) == (None, (), None)
  assert dict(os.environ) == before
  assert len(lines) == 1 and lines[0].endswith('JAX had already started in this process: nothing chosen')


def test_the_layout_of_the_weight_gradient_does_not_change_it():
  """matmul's CPU weight gradient (x^T written out, then a YNNPACK product) against the plain one."""
  rng = np.random.default_rng(0)
  x, w, dy = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((96, 32), (32, 48), (96, 48)))
  ours = jax.jit(lambda x, w: jax.vjp(matmul, x, w)[1](dy))(x, w)
  plain = jax.jit(lambda x, w: jax.vjp(jnp.matmul, x, w)[1](dy))(x, w)
  for a, b in zip(ours, plain):
    # One float32 contraction over 96 (or 48) terms in another order: ~1e-6 relative at most.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def run_tiny(workdir, xla_flags, *args):
  """`python -m gptjax.train` on configs/tiny.py (20 steps) in a fresh process; XLA_FLAGS None = unset."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  cmd = [sys.executable, '-m', 'gptjax.train', '--config=configs/tiny.py', f'--workdir={workdir}', '--noprogress',
         '--config.train.max_steps=20', *args]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_each_automatic_choice_keeps_the_losses(tmp_path):
  """The tiny config with every choice off, each one on alone, and all of them as this machine picks
  them: the same train and val losses (fresh processes: XLA flags and device counts are per process)."""
  variants = {
      'off': ('', '--nocpu_auto'),
      'malloc': ('',),  # XLA_FLAGS given (empty): only malloc is chosen
      'ynn reductions off': ('--xla_cpu_experimental_ynn_fusion_type=-reduce', '--nocpu_auto'),
      'one device per core': ('--xla_force_host_platform_device_count=2', '--nocpu_auto'),
      'automatic': (None,),
  }
  procs = {name: run_tiny(tmp_path / name.replace(' ', '_'), *v) for name, v in variants.items()}
  losses, records = {}, {}
  for name, proc in procs.items():
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    workdir = tmp_path / name.replace(' ', '_')
    rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
    losses[name] = [r[k] for r in rows for k in ('train_loss', 'val_loss') if k in r]
    records[name] = json.loads(open(workdir / 'provenance.jsonl').readline())
    assert sum(line.startswith('cpu: ') for line in out.splitlines()) == 1, out  # the one log line
  assert records['one device per core']['local_devices'] == 2
  assert records['off']['local_devices'] == 1 and records['off']['xla_flags'] == ''
  assert records['malloc']['cpu_choices']['malloc_keep_bytes'] == 256 << 20
  expected = cpu.choose(cpu.read_cpu(), {}, batch_size=8, state_bytes=1).to_dict()
  assert records['automatic']['cpu_choices'] == {**expected, 'notes': records['automatic']['cpu_choices']['notes']}
  assert len(losses['off']) == 4  # val at 0, train at 10, train and val at 20
  for name in variants:
    # float32 sums in another order (gradients reduced across devices, other reduction kernels):
    # the losses here differ by < 2e-6 after 20 AdamW steps; 1e-4 is far below what another batch,
    # dropout mask or initialisation changes (> 1e-2).
    print(name, np.max(np.abs(np.subtract(losses[name], losses["off"]))), losses[name])
    np.testing.assert_allclose(losses[name], losses["off"], rtol=0, atol=1e-4, err_msg=name)


def test_last_level_cache_is_the_highest_level_the_kernel_reports(tmp_path):
  """Sizes as sysfs writes them (K/M suffixes); the highest level wins, whatever the entry order;
  no readable entry gives None."""
  for entry, level, size in [('index0', 1, '48K'), ('index2', 2, '1024K'), ('index3', 3, '32768K'),
                             ('index1', 1, '32K')]:
    os.makedirs(tmp_path / entry)
    (tmp_path / entry / 'level').write_text(f'{level}\n')
    (tmp_path / entry / 'size').write_text(f'{size}\n')
  assert cpu.last_level_cache_bytes(str(tmp_path)) == 32 << 20
  (tmp_path / 'index3' / 'size').write_text('2M\n')
  assert cpu.last_level_cache_bytes.__wrapped__(str(tmp_path)) == 2 << 20  # read again, past the cache
  assert cpu.last_level_cache_bytes(str(tmp_path / 'missing')) is None
