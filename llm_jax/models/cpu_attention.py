"""A fused attention kernel for XLA:CPU, written in C++ and called through the XLA FFI.

XLA:CPU runs attention as many small batched products (one Eigen call per batch and
head), plus a mask, a softmax and the transposes between them, at a third of its matrix
product rate. ``csrc/cpu_attention.cc`` does one (batch, kv head) at a time instead:
it transposes that head's k (v in the backward pass) once, reads the other operands in
place, computes the scores, softmax and output in 4-row tiles that stop at the causal
diagonal, keeps the probabilities for the backward pass (no recomputation), and spreads
the heads over XLA's intra-op threads. Values equal ``attention_kernels.xla_attention`` to
float32 rounding, fully masked rows included. Under ``jax.vmap`` it runs once per
mapped element.

The library is compiled on first use with the system C++ compiler (``$CXX``, else
``c++``/``g++``/``clang++``) against the XLA FFI headers that ship with jaxlib, for this
machine's CPU (``-march=native``), and cached under ``$LLM_JAX_CACHE`` (default
``~/.cache/llm_jax``)/``ffi``, keyed by the source, the compiler, jaxlib's version and the
CPU's model and flags. The build writes a temporary file and renames it, so processes
that start together never load a half-written library. Where there is no compiler, or
the build fails, ``available()`` says why: ``attention_kernel='cpu_fused'`` then raises
that reason, and ``'auto'`` logs it and runs ``blocked`` instead.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name('csrc') / 'cpu_attention.cc'
FORWARD, BACKWARD = 'llm_jax_cpu_attention_forward', 'llm_jax_cpu_attention_backward'
_LOCK = threading.Lock()
_STATE: dict = {}  # 'error': why the kernel is unavailable, or 'path': the loaded library
_COMPILE_TIMEOUT_S = 300
_REGISTERED: list = []  # the library whose handlers XLA holds (once per process: XLA refuses a second)


class BuildError(RuntimeError):
  """The kernel could not be compiled or loaded here; the message says why and what to do."""


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get('LLM_JAX_CACHE') or pathlib.Path.home() / '.cache' / 'llm_jax') / 'ffi'


def compiler() -> Optional[str]:
  for name in filter(None, (os.environ.get('CXX'), 'c++', 'g++', 'clang++')):
    path = shutil.which(name)
    if path:
      return path
  return None


def _cpu_signature() -> str:
  """The CPU's model name and feature flags: a library built with -march=native is only
  for CPUs like this one (a home directory shared between machines keeps one per CPU)."""
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return platform.machine() + platform.processor()
  keep = [line for line in text.splitlines()
          if line.split(':')[0].strip() in ('model name', 'flags', 'Features', 'CPU part')]
  return '\n'.join(sorted(set(keep)))


def _command(cxx: str, source: pathlib.Path, output: pathlib.Path) -> list[str]:
  return [cxx, '-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fno-math-errno',
          '-I', jax.ffi.include_dir(), str(source), '-o', str(output)]


def library_path(cxx: str) -> pathlib.Path:
  import jaxlib
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), ' '.join(_command(cxx, SOURCE, pathlib.Path('out'))).encode(),
               jaxlib.__version__.encode(), _cpu_signature().encode()):
    key.update(part)
  return cache_dir() / f'cpu_attention-{key.hexdigest()[:16]}.so'


def build(cxx: str) -> pathlib.Path:
  """Compiles the library into the cache (once) and returns its path; BuildError if it fails."""
  path = library_path(cxx)
  if path.exists():
    return path
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + '.', suffix='.tmp.so', dir=path.parent)
    os.close(fd)
  except OSError as e:
    raise BuildError(f'cannot write the compiled kernel to {path.parent} ({e}); '
                     'set LLM_JAX_CACHE to a writable directory.') from None
  try:
    try:
      result = subprocess.run(_command(cxx, SOURCE, pathlib.Path(tmp)), capture_output=True, text=True,
                              timeout=_COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      raise BuildError(f'{cxx} did not finish compiling {SOURCE.name} in {_COMPILE_TIMEOUT_S} s') from None
    if result.returncode != 0:
      tail = ' / '.join(line.strip() for line in result.stderr.strip().splitlines()[-3:])
      raise BuildError(f'{cxx} failed to compile {SOURCE.name} (exit {result.returncode}): {tail}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


def _load() -> None:
  cxx = compiler()
  if cxx is None:
    raise BuildError('no C++ compiler found (set CXX, or install g++ or clang++)')
  path = build(cxx)
  try:
    lib = ctypes.cdll.LoadLibrary(str(path))
  except OSError as e:
    raise BuildError(f'cannot load {path} ({e}); delete it to rebuild.') from None
  if not _REGISTERED:
    for name, symbol in ((FORWARD, lib.LlmJaxAttentionForward), (BACKWARD, lib.LlmJaxAttentionBackward)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform='cpu')
    _REGISTERED.append(lib)
  _STATE['path'] = path


def available() -> Optional[str]:
  """None when the kernel is built and registered; else the reason it is not (cached)."""
  with _LOCK:
    if 'path' not in _STATE and 'error' not in _STATE:
      try:
        _load()
      except BuildError as e:
        _STATE['error'] = str(e)
    return _STATE.get('error')


def _require() -> None:
  error = available()
  if error:
    raise BuildError(f"attention_kernel='cpu_fused' is unavailable: {error}. "
                     "Use attention_kernel='auto' to fall back to 'blocked', or 'blocked'/'xla'.")


def _padded(s: int) -> int:
  return -(-s // 16) * 16


def _attrs(q, causal: bool) -> dict:
  return dict(causal=bool(causal), scale=np.float32(q.shape[-1] ** -0.5))


def _forward(q, k, v, mask, causal):
  b, t, n, _ = q.shape
  out = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
         jax.ShapeDtypeStruct((b, n, t, _padded(k.shape[1])), jnp.float32))
  return jax.ffi.ffi_call(FORWARD, out, vmap_method='sequential')(q, k, v, mask, **_attrs(q, causal))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, mask, causal):
  return _forward(q, k, v, mask, causal)[0]


def _attention_fwd(q, k, v, mask, causal):
  o, p = _forward(q, k, v, mask, causal)
  return o, (q, k, v, mask, p)


def _attention_bwd(causal, residuals, do):
  q, k, v, mask, p = residuals
  out = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(k.shape, jnp.float32),
         jax.ShapeDtypeStruct(v.shape, jnp.float32))
  dq, dk, dv = jax.ffi.ffi_call(BACKWARD, out, vmap_method='sequential')(
      q, k, v, mask, p, do.astype(jnp.float32), **_attrs(q, causal))
  return dq, dk, dv, np.zeros(mask.shape, jax.dtypes.float0)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, *, mask=None, causal=False):
  """softmax(q·kᵀ/√H + mask)·v for q [B,T,N,H], k, v [B,S,K,H] and a boolean mask
  [B,1,T,S] (or None: every key), computed in float32; the output has q's dtype."""
  _require()
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  if n % kv_heads:
    raise ValueError(f'cpu_fused attention: {n} query heads are not a multiple of {kv_heads} kv heads.')
  if mask is None:
    mask = jnp.tril(jnp.ones((t, s), bool), s - t) if causal else jnp.ones((t, s), bool)
    mask = mask[None, None]
  mask = jnp.broadcast_to(mask.astype(bool), (b, 1, t, s)).reshape(b, t, s)
  f32 = jnp.float32
  # The kernel skips the keys after each query's tile by index, which is right for causal
  # self-attention only; with a cache (T != S) the mask alone decides.
  out = _attention(q.astype(f32), k.astype(f32), v.astype(f32), mask, bool(causal) and t == s)
  return out.astype(q.dtype)
