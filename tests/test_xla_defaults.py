"""XLA:CPU defaults that importing llm_jax sets (llm_jax/__init__.py)."""

import os
import subprocess
import sys

import llm_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags_after_import(**env) -> str:
  clean = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'LLM_JAX_KEEP_XLA_FLAGS')}
  clean['PYTHONPATH'] = ROOT + os.pathsep + clean.get('PYTHONPATH', '')
  clean.update(env)
  out = subprocess.run([sys.executable, '-c', 'import os, llm_jax; print(os.environ.get("XLA_FLAGS", ""))'],
                       env=clean, capture_output=True, text=True, timeout=60, check=True)
  return out.stdout.strip()


def test_defaults_follow_the_cpu():
  flags = _flags_after_import().split()
  assert '--xla_cpu_experimental_ynn_fusion_type=' in flags
  avx512 = 'avx512f' in open('/proc/cpuinfo').read().split() if os.path.exists('/proc/cpuinfo') else False
  assert ('--xla_cpu_prefer_vector_width=512' in flags) == avx512


def test_user_flags_win_and_are_kept():
  flags = _flags_after_import(XLA_FLAGS='--xla_cpu_prefer_vector_width=256 --xla_force_host_platform_device_count=2')
  assert flags.split()[:2] == ['--xla_cpu_prefer_vector_width=256', '--xla_force_host_platform_device_count=2']
  assert '--xla_cpu_prefer_vector_width=512' not in flags
  assert '--xla_cpu_experimental_ynn_fusion_type=' in flags


def test_products_compile_without_ynn_fusions():
  """The YNN default is what the flag exists for: jaxlib 0.10.2 fuses plain products into YNN without it."""
  code = ('import llm_jax, jax, jax.numpy as jnp\n'
          'a, b = jnp.ones((6, 64, 64)), jnp.ones((6, 64, 32))\n'
          'batched = jax.jit(lambda a, b: jnp.einsum("bij,bjk->bik", a, b)).lower(a, b).compile().as_text()\n'
          'plain = jax.jit(lambda a, b: a[0] @ b[0]).lower(a, b).compile().as_text()\n'
          'print("__ynn_fusion" in batched, "__ynn_fusion" in plain)\n')
  clean = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'LLM_JAX_KEEP_XLA_FLAGS')}
  clean.update(PYTHONPATH=ROOT + os.pathsep + clean.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], env=clean, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-2:] == ['False', 'False']


def test_keep_xla_flags_sets_nothing():
  assert _flags_after_import(LLM_JAX_KEEP_XLA_FLAGS='1', XLA_FLAGS='--xla_dump_to=/tmp/x') == '--xla_dump_to=/tmp/x'


def test_cpu_flag_lookup():
  assert llm_jax._cpu_has('definitely_not_a_cpu_flag') is False
