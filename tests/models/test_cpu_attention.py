"""The fused C++ attention kernel (``llm_jax/models/cpu_attention.py``): values and gradients
against the 'xla' kernel on every row, padding rows included; its build, cache and the
errors and fallbacks when it cannot be built.

The odd shapes are on purpose: T = 14, 33 or 40 leave query tiles of fewer than 4 rows
and key counts that are not multiples of 16, head dims 8 and 24 take the padded-copy
path (16 and 64 read the operands in place), and one kv head serving 4 query heads
checks the grouped-query indexing and dk/dv accumulation.
"""

import logging
import os
import pathlib
import subprocess
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax.models import attention_kernels, cpu_attention, layers
from tests.models.test_attention_kernels import packed_rows

ROOT = pathlib.Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)
pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='a CPU kernel')


def masks(t, causal):
  """[2, 1, T, T] for ``packed_rows``: row 0 packs documents of 5 and T-9 tokens and 4
  padding tokens (queries that see no key at all), row 1 is one document."""
  seg, pos = packed_rows(t)
  return np.asarray(layers.attention_mask(seg, seg, pos, pos, causal=causal))


def operands(t, n, k, h):
  return tuple(jnp.asarray(RNG.normal(size=(2, t, heads, h)).astype(np.float32)) for heads in (n, k, k))


def values_and_grads(fn, q, k, v, cotangent):
  out, pull = jax.vjp(fn, q, k, v)
  return (out,) + pull(cotangent)


@pytest.mark.parametrize('n,k,t,h,causal', [
    (4, 2, 16, 8, True), (4, 1, 14, 16, True), (2, 2, 40, 24, False), (2, 1, 33, 64, True),
    (4, 4, 16, 16, False)])
def test_values_and_gradients_equal_xla_on_every_row(n, k, t, h, causal):
  q, kk, v = operands(t, n, k, h)
  mask = jnp.asarray(masks(t, causal))
  cotangent = jnp.asarray(RNG.normal(size=q.shape).astype(np.float32))
  fused = jax.jit(lambda q, k, v: values_and_grads(
      lambda *a: attention_kernels.cpu_fused_attention(*a, mask=mask, causal=causal), q, k, v, cotangent))
  xla = jax.jit(lambda q, k, v: values_and_grads(
      lambda *a: attention_kernels.xla_attention(*a, mask=mask), q, k, v, cotangent))
  got, want = fused(q, kk, v), xla(q, kk, v)
  for name, a, b in zip(('out', 'dq', 'dk', 'dv'), got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=2e-5, err_msg=name)
  again = fused(q, kk, v)  # threads take the (batch, head) items in any order: same bits
  for a, b in zip(got, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('causal,t,s', [(True, 20, 20), (False, 20, 20), (True, 8, 12)])
def test_without_a_mask_causal_means_by_index(causal, t, s):
  """With T < S (queries after a cache of S - T keys), query i sees keys up to S - T + i."""
  q = operands(t, 2, 1, 16)[0]
  _, k, v = operands(s, 2, 1, 16)
  mask = jnp.tril(jnp.ones((t, s), bool), s - t) if causal else jnp.ones((t, s), bool)
  got = jax.jit(lambda *a: cpu_attention.attention(*a, causal=causal))(q, k, v)
  want = attention_kernels.xla_attention(q, k, v, mask=jnp.broadcast_to(mask, (2, 1, t, s)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=2e-5)


def test_bfloat16_operands_run_in_float32_and_return_bfloat16():
  q, k, v = (x.astype(jnp.bfloat16) for x in operands(16, 2, 2, 16))
  mask = jnp.asarray(masks(16, True))
  got = attention_kernels.cpu_fused_attention(q, k, v, mask=mask, causal=True)
  assert got.dtype == jnp.bfloat16
  want = attention_kernels.xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask=mask)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=2e-2)


def test_attention_dropout_is_refused():
  q, k, v = operands(8, 2, 2, 16)
  with pytest.raises(ValueError, match="'cpu_fused' has no attention dropout"):
    attention_kernels.cpu_fused_attention(q, k, v, dropout=lambda p: p, causal=True)


# ----------------------------------------------------------------------------- build, cache, errors

@pytest.fixture
def fresh(monkeypatch, tmp_path):
  """An empty kernel cache and no memory of earlier builds; the loaded library is kept for later tests."""
  monkeypatch.setenv('LLM_JAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setattr(cpu_attention, '_STATE', {})
  monkeypatch.setattr(attention_kernels, '_LOGGED', set())
  return tmp_path


def test_the_library_is_built_once_into_the_cache_and_reused(fresh, monkeypatch):
  cxx = cpu_attention.compiler()
  assert cxx, 'the test machine has a C++ compiler'
  paths = []
  threads = [threading.Thread(target=lambda: paths.append(cpu_attention.build(cxx))) for _ in range(2)]
  for thread in threads:  # two builds at once (two processes starting together): one whole file
    thread.start()
  for thread in threads:
    thread.join()
  assert len(paths) == 2 and paths[0] == paths[1] and paths[0].parent == fresh / 'cache' / 'ffi'
  assert sorted(p.name for p in paths[0].parent.iterdir()) == [paths[0].name]  # no temporary left
  def no_compiler(*args, **kwargs):
    raise AssertionError('compiled again')
  monkeypatch.setattr(subprocess, 'run', no_compiler)
  assert cpu_attention.build(cxx) == paths[0]
  assert cpu_attention.available() is None


def test_a_failing_compiler_is_reported_with_its_message(fresh, monkeypatch):
  script = fresh / 'broken-c++'
  script.write_text('#!/bin/sh\necho "error: this compiler is broken" >&2\nexit 3\n')
  script.chmod(0o755)
  monkeypatch.setenv('CXX', str(script))
  error = cpu_attention.available()
  assert 'broken-c++ failed to compile cpu_attention.cc (exit 3): error: this compiler is broken' in error
  assert '\n' not in error  # it ends up in one-line config errors
  assert not list((fresh / 'cache' / 'ffi').iterdir())  # the temporary file is removed
  q, k, v = operands(8, 2, 2, 16)
  with pytest.raises(cpu_attention.BuildError, match="attention_kernel='cpu_fused' is unavailable: .*exit 3.*"
                     "Use attention_kernel='auto' to fall back to 'blocked'"):
    attention_kernels.cpu_fused_attention(q, k, v, causal=True)


def test_an_unwritable_cache_names_the_setting_to_change(fresh, monkeypatch):
  (fresh / 'not-a-directory').write_text('')
  monkeypatch.setenv('LLM_JAX_CACHE', str(fresh / 'not-a-directory'))
  assert 'set LLM_JAX_CACHE to a writable directory' in cpu_attention.available()


def test_without_a_compiler_auto_falls_back_to_blocked_with_a_warning_and_config_says_why(
    fresh, monkeypatch, caplog):
  monkeypatch.setattr(cpu_attention, 'compiler', lambda: None)
  q, k, v = operands(16, 2, 2, 16)
  mask = jnp.asarray(masks(16, True))
  choice = attention_kernels.choose(q, k, mask=mask, causal=True, block=4, platform='cpu', devices=1)
  assert choice == attention_kernels.Choice(
      'blocked', 'cpu_fused is unavailable: no C++ compiler found (set CXX, or install g++ or clang++)', True)
  with caplog.at_level(logging.INFO, logger='absl'):
    got = attention_kernels.get('auto')(q, k, v, mask=mask, causal=True, block=4)
  assert [r.levelname for r in caplog.records if 'attention_kernel=auto' in r.getMessage()] == ['WARNING']
  np.testing.assert_allclose(np.asarray(got), np.asarray(attention_kernels.blocked_attention(
      q, k, v, mask=mask, causal=True, block=4)), atol=1e-6)
  config = config_lib.from_file(str(ROOT / 'configs' / 'default.py'),
                                **{'model.attention_kernel': 'cpu_fused', 'sample.prompt': ''})
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  assert ("config.model.attention_kernel='cpu_fused' needs the CPU and a C++ compiler to build it "
          "(llm_jax/models/cpu_attention.py); here: cpu") in str(e.value)
  assert "Use attention_kernel='auto' to fall back" in str(e.value) and '\n' not in str(e.value)


def test_off_the_cpu_the_kernel_is_refused():
  message = attention_kernels.unsupported('cpu_fused', dtype=jnp.bfloat16, head_dim=64, seq_len=128, platform='gpu')
  assert "'cpu_fused' needs the CPU and a C++ compiler" in message and 'here: gpu' in message
  assert attention_kernels.choose(jax.ShapeDtypeStruct((2, 128, 4, 64), jnp.float32),
                          jax.ShapeDtypeStruct((2, 128, 4, 64), jnp.float32), causal=True,
                          platform='gpu').name != 'cpu_fused'


def test_a_damaged_cached_library_is_reported_with_the_fix(fresh):
  path = cpu_attention.library_path(cpu_attention.compiler())
  path.parent.mkdir(parents=True)
  path.write_bytes(b'not a shared library')
  error = cpu_attention.available()
  assert error.startswith(f'cannot load {path}') and error.endswith('delete it to rebuild.')


_ON_A_MESH = '''
import logging, sys
import jax, jax.numpy as jnp, numpy as np
from absl import logging as absl_logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from llm_jax.models import attention_kernels
warnings = []
absl_logging.get_absl_logger().addHandler(type('H', (logging.Handler,), {'emit': lambda s, r: warnings.append(r.getMessage())})())
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.normal(size=(8, 24, 4, 16)), jnp.float32) for _ in range(3))
mask = jnp.broadcast_to(jnp.tril(jnp.ones((24, 24), bool)), (8, 1, 24, 24))
batch = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), PartitionSpec('data'))
q, k, v, mask = (jax.device_put(x, batch) for x in (q, k, v, mask))
def grads(kernel):
  loss = lambda q, k, v: jnp.sum(jnp.sin(kernel(q, k, v, mask=mask, causal=True)))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
got, want = grads(attention_kernels.cpu_fused_attention), grads(attention_kernels.xla_attention)
np.testing.assert_allclose(float(got[0]), float(want[0]), atol=2e-3)  # a sum of 12288 sines
for a, b in zip(got[1], want[1]):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=2e-5)
assert any('cpu_fused with 8 devices' in w for w in warnings), warnings
choice = attention_kernels.choose(q, k, mask=mask, causal=True, block=8)
assert choice.name == 'blocked', choice
print('ok')
'''


def test_on_a_mesh_the_explicit_kernel_is_right_and_warns_and_auto_keeps_to_blocked():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  proc = subprocess.run([os.sys.executable, '-c', _ON_A_MESH], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_under_vmap_and_with_an_integer_mask():
  q, k, v = (jnp.stack([x, 2 * x]) for x in operands(12, 2, 1, 16))  # a leading mapped axis
  mask = jnp.asarray(masks(12, True)).astype(jnp.int32)
  fused = lambda q, k, v: jnp.sum(jnp.sin(attention_kernels.cpu_fused_attention(q, k, v, mask=mask, causal=True)))
  xla = lambda q, k, v: jnp.sum(jnp.sin(attention_kernels.xla_attention(q, k, v, mask=mask.astype(bool))))
  got = jax.vmap(jax.grad(fused, argnums=(0, 1, 2)))(q, k, v)
  want = jax.vmap(jax.grad(xla, argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=2e-5)


def test_a_compiler_that_hangs_is_stopped(fresh, monkeypatch):
  script = fresh / 'slow-c++'
  script.write_text('#!/bin/sh\nsleep 30\n')
  script.chmod(0o755)
  monkeypatch.setenv('CXX', str(script))
  monkeypatch.setattr(cpu_attention, '_COMPILE_TIMEOUT_S', 1)
  assert cpu_attention.available().endswith('did not finish compiling cpu_attention.cc in 1 s')
