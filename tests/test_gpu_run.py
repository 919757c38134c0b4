"""experiments/gpu_run.py runs where the GPU machines are: without ml_collections or tensorboardX.

The lent GPU machines have jax, flax, optax, orbax and numpy but neither of those two packages; the
script and every gptjax module it imports must not need them. Here it runs on the CPU with a tiny
shape in a Python where importing either fails.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKED_RUN = '''
import runpy, sys
for name in ('ml_collections', 'tensorboardX'):
  sys.modules[name] = None  # `import name` now raises ImportError
sys.argv = ['gpu_run.py'] + sys.argv[1:]
runpy.run_path({script!r}, run_name='__main__')
'''


def test_gpu_run_script_needs_neither_ml_collections_nor_tensorboardx(tmp_path):
  script = os.path.join(ROOT, 'experiments', 'gpu_run.py')
  args = ['--steps=5', '--steps_per_call=5', '--n_layer=1', '--n_head=2', '--n_embd=32', '--seq=32', '--batch=4',
          '--vocab=128', '--variants=', '--check_layers=1', '--profile_calls=1', '--ceiling_size=64',
          f'--json={tmp_path}/figures.json']
  proc = subprocess.run([sys.executable, '-c', BLOCKED_RUN.format(script=script), *args], capture_output=True,
                        text=True, cwd=str(tmp_path), env={**os.environ, 'XLA_FLAGS': ''}, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout
  # No cuDNN on a CPU: the script says why, checks the 'xla' path against einsum instead, and passes.
  assert "attention: einsum (cuDNN's fused kernel needs an NVIDIA GPU" in out
  assert "check: attention 'xla' vs einsum, bfloat16" in out and 'attention check: PASS' in out
  assert '| decode logits, ragged |' in out
  # The training table, with MFU null (no peak is known for a CPU) and the compiled step's memory.
  row = next(line for line in out.splitlines() if line.startswith('| main |'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[1:5] == ['einsum', 'none', 'bfloat16', '4'] and cells[7] == 'null', row
  assert float(cells[6].replace(',', '')) > 0 and cells[8].endswith('GiB')
  # The same figures as JSON, MFU null rather than 0 or a guess.
  figures = json.load(open(tmp_path / 'figures.json'))
  assert figures['attention_check'] is True and figures['device_kind'] == 'cpu'
  (run,) = figures['runs']
  assert run['mfu'] is None and run['tokens_per_sec'] > 0 and run['step_bytes'] > 0
  assert figures['matmul_ceiling_flops'] > 0
  # The profile of the main run: the kinds add up to the kernels' busy time, which fits inside the
  # traced span (one call of 5 steps, XLA:CPU's ops as the 'kernels'), and its matmuls are found.
  kernels = run['kernels']
  assert kernels['steps'] == 5
  assert abs(sum(kernels['categories_ms_per_step'].values()) - kernels['busy_ms_per_step']) < 1e-6
  assert 0 < kernels['busy_ms_per_step'] <= kernels['span_ms_per_step'] * 2  # two threads may overlap
  assert kernels['categories_ms_per_step'].get('matmul', 0) > 0
  assert "== where a step's device time goes (5 profiled steps" in out
