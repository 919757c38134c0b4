"""What the accelerator can do: peak dense matmul FLOP/s per device kind (for MFU) and its memory use.

PEAK_FLOPS is keyed by the name a device reports as `jax.Device.device_kind`. Each entry gives the
vendor's peak for dense (not 2:4-sparse) matrix math, per chip, in two precisions:

  bfloat16  bf16 (and fp16) inputs with float32 accumulation: model.dtype='bfloat16'.
  float32   what float32 matmuls run as at JAX's default precision, which "leans toward speed"
            (https://docs.jax.dev/en/latest/201/precision.html): TF32 tensor cores on NVIDIA
            Ampere/Hopper/Ada GPUs, one bfloat16 pass on TPUs (hence the same number as bfloat16).
            Under jax_default_matmul_precision='highest' the true-float32 rate is far lower
            (H100 SXM: 67 TFLOP/s); MFU is then measured against the wrong peak.

NVIDIA's datasheets quote tensor-core rates "with sparsity"; the dense rate is half of that.
A device kind that is not in the table (every CPU, for one) has no peak: MFU is then None, never 0.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax


class Peak(NamedTuple):
  bfloat16: float  # FLOP/s, dense, per chip
  float32: float  # FLOP/s of float32 matmuls at JAX's default precision (TF32 on NVIDIA, bf16 on TPU)
  source: str


_H100 = 'https://www.nvidia.com/en-us/data-center/h100/ (datasheet; sparse rates halved)'
_H200 = 'https://www.nvidia.com/en-us/data-center/h200/ (datasheet; sparse rates halved)'
_A100 = ('https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/'
         'nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (dense rates)')
_L4 = 'https://www.nvidia.com/en-us/data-center/l4/ (datasheet; sparse rates halved)'
_TPU = 'https://cloud.google.com/tpu/docs/{} ("peak compute per chip (bf16)")'

# (pattern matched against device_kind, name, Peak); the first match wins, so variants come first.
PEAK_FLOPS = (
    (r'H100.*PCIe', 'H100 PCIe', Peak(756e12, 378e12, _H100)),
    (r'H100.*NVL', 'H100 NVL', Peak(835.5e12, 417.5e12, _H100)),
    (r'H100', 'H100 SXM', Peak(989.5e12, 494.5e12, _H100)),  # 'NVIDIA H100 80GB HBM3'
    (r'H200.*NVL', 'H200 NVL', Peak(835.5e12, 417.5e12, _H200)),
    (r'H200', 'H200 SXM', Peak(989.5e12, 494.5e12, _H200)),  # 'NVIDIA H200'
    (r'A100', 'A100', Peak(312e12, 156e12, _A100)),  # SXM4 and PCIe alike
    (r'\bL4\b', 'L4', Peak(121e12, 60e12, _L4)),  # not the L40/L40S
    (r'^TPU v4$', 'TPU v4', Peak(275e12, 275e12, _TPU.format('v4'))),
    (r'^TPU v5 ?lite$|^TPU v5e$', 'TPU v5e', Peak(197e12, 197e12, _TPU.format('v5e'))),
    (r'^TPU v5p?$', 'TPU v5p', Peak(459e12, 459e12, _TPU.format('v5p'))),
    (r'^TPU v6 ?lite$|^TPU v6e$', 'TPU v6e', Peak(918e12, 918e12, _TPU.format('v6e'))),
)


def peak_of(device_kind: str) -> tuple[str, Peak] | None:
  """(table name, Peak) for a jax.Device.device_kind, or None when the table does not know it."""
  for pattern, name, peak in PEAK_FLOPS:
    if re.search(pattern, device_kind):
      return name, peak
  return None


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak dense FLOP/s of one device of this kind for matmuls in `dtype` (the model's compute
  dtype: 'bfloat16', 'float16' or 'float32'), or None where unknown."""
  found = peak_of(device_kind)
  if found is None:
    return None
  peak = found[1]
  return peak.float32 if dtype == 'float32' else peak.bfloat16


def total_peak_flops(devices, dtype: str) -> float | None:
  """The summed peak FLOP/s of `devices` in `dtype`, or None if any of them has no known peak."""
  peaks = [peak_flops(d.device_kind, dtype) for d in devices]
  return None if not peaks or None in peaks else float(sum(peaks))


def peak_memory_bytes(device: jax.Device | None = None) -> int | None:
  """The most memory `device` (default: the first) has held since the process started, in bytes,
  from its allocator's statistics; None where the backend keeps none (CPU)."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  return None if not stats else stats.get('peak_bytes_in_use')
