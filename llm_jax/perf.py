"""Peak FLOP/s of the device, for model FLOPs utilization (MFU).

On the CPU the peak is *measured*: a jitted square matrix product in the compute dtype,
best of several runs, in the same process as the training being judged. On GPUs and
TPUs it is the datasheet's dense figure for the chip. ``cpu_seconds`` is the process's
CPU time, for how many cores a timed stretch kept busy (CPU seconds over wall seconds).
"""

import functools
import resource
import time

import jax
import jax.numpy as jnp

# Dense bf16 TFLOP/s per chip, from the vendors' datasheets.
DATASHEET_TFLOPS = {
    'H100': 989.0,     # H100 SXM
    'H200': 989.0,
    'A100': 312.0,
    'TPU v4': 275.0,
    'TPU v5 lite': 197.0,
    'TPU v5e': 197.0,
    'TPU v5p': 459.0,
    'TPU v6 lite': 918.0,
    'TPU v6e': 918.0,
}


def cpu_seconds() -> float:
  """User + system CPU seconds this process has used so far, all threads (``getrusage``)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure_matmul_flops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of an n×n @ n×n product through XLA (best of ``repeats``)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def measure_peak_flops(dtype_name: str = 'float32') -> tuple[float, str]:
  """(peak FLOP/s per device, how it was obtained), measured anew on the CPU each call."""
  device = jax.devices()[0]
  if device.platform == 'cpu':
    flops = measure_matmul_flops(dtype=jnp.dtype(dtype_name))
    return flops, f'measured {dtype_name} 2048² matmul'
  kind = device.device_kind
  for name, tflops in DATASHEET_TFLOPS.items():
    if name.lower() in kind.lower():
      return tflops * 1e12, f'datasheet bf16 dense for {kind}'
  return float('nan'), f'unknown device {kind}'


peak_flops = functools.lru_cache(maxsize=None)(measure_peak_flops)
peak_flops.__doc__ = 'measure_peak_flops, measured once per process (what the training loop uses).'
