"""Host memory for XLA:CPU's buffers: the entry points re-execute once with glibc tunables.

XLA:CPU allocates every step's temporary buffers with ``malloc`` (about 950 MB per step
at ``shakespeare_char`` shapes, batch 16). glibc serves allocations that large from
fresh ``mmap`` pages and unmaps them on free, so each step takes a page fault per
4 KiB page (about 238,000 per step) and runs its matrix products over 4 KiB pages
(a TLB miss every few rows). glibc 2.35 and later have a tunable,
``glibc.malloc.hugetlb=1``, that makes ``malloc`` advise those mappings for
transparent huge pages (2 MiB): about 800 faults per step instead, and the
``shakespeare_char`` step went from 1109 to 876 ms on 2 cores (README,
"Benchmarks").

glibc reads tunables once, when the process starts, so nothing inside a running
Python can switch it on. ``setup()``, called first thing by ``python -m
llm_jax.main``, ``llm_jax.bench`` and ``llm_jax.sample``, runs
``reexec_with_hugepages()``, which replaces the
process (same PID, arguments, environment and open files) with the same command
line plus ``GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1``. It does nothing when the
tunable is already set (so it runs at most once), off Linux/glibc, on glibc older
than 2.35 (which ignores the tunable), when the kernel's transparent huge pages are
``never``, or when ``LLM_JAX_HUGEPAGES=0``.

Huge pages make the faults cheap but not free: each step still maps, zeroes and unmaps
its 950 MB, about 50 ms of kernel time per step, and on a virtual machine whose host
takes freed memory back (the development VM) 150-400 ms when steps follow each other
without a pause. So the tunables also keep freed memory in the process:
``glibc.malloc.mmap_max=0`` (large blocks come from the heap, not fresh mappings) and
a ``glibc.malloc.trim_threshold`` of 1 TiB (the heap is never handed back). That works
for the thread that uses glibc's main heap, Python's main thread; glibc's per-thread
heaps cannot hold a block over 64 MB and map it fresh anyway. ``setup()`` therefore
also tells jax to run single-device CPU computations in the calling thread
(``jax_cpu_enable_async_dispatch=False``; it must be set before the CPU backend
starts, and multi-device computations stay asynchronous): the step's temporaries then
come from the main heap and are reused from step to step, with no page faults and no
kernel time, and steps that follow each other run as fast as steps after a pause
(README, "Speed and memory levers"). The cost is that the process keeps the host
memory it has freed, so its resident size stays at its peak.

In a notebook or your own script, start Python with ``GLIBC_TUNABLES`` set to
``tunables_with_hugepages('')`` and call ``run_cpu_computations_inline()`` before the
first computation to get the same effect.
"""

import os
import sys
import time

TUNABLE = 'glibc.malloc.hugetlb'
ASYNC_DISPATCH = 'jax_cpu_enable_async_dispatch'  # jax's option, read when its CPU backend starts
KEEP_FREED = {'glibc.malloc.mmap_max': '0', 'glibc.malloc.trim_threshold': str(1 << 40)}
OPT_OUT = 'LLM_JAX_HUGEPAGES'
START_TIME = 'LLM_JAX_START_TIME'  # the first process's start, kept across the re-execution
_THP = '/sys/kernel/mm/transparent_hugepage/enabled'
_INHERITED_START = os.environ.pop(START_TIME, None)  # not passed on to this process's children


def glibc_version() -> tuple[int, int]:
  """(major, minor) of the C library's glibc, (0, 0) where it is not glibc."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return (0, 0)
  if name != 'glibc':
    return (0, 0)
  parts = version.split('.')
  try:
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
  except ValueError:
    return (0, 0)


def transparent_hugepages() -> str:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), '' if unknown."""
  try:
    with open(_THP) as f:
      text = f.read()
  except OSError:
    return ''
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else ''


def why_not(environ=None) -> str:
  """Why the tunable would not be added here ('' if it would be)."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT) == '0':
    return f'{OPT_OUT}=0'
  if TUNABLE in environ.get('GLIBC_TUNABLES', ''):
    return f'GLIBC_TUNABLES already sets {TUNABLE}'
  if not sys.platform.startswith('linux'):
    return f'not Linux ({sys.platform})'
  if glibc_version() < (2, 35):
    return 'glibc older than 2.35 (or not glibc)'
  if transparent_hugepages() in ('', 'never'):
    return 'transparent huge pages are off in this kernel'
  if not getattr(sys, 'orig_argv', None):
    return 'the command line is unknown (Python < 3.10)'
  return ''


def _tunables(text: str) -> dict:
  """'a=1:b=2' (a GLIBC_TUNABLES value) -> {'a': '1', 'b': '2'}."""
  return dict(item.split('=', 1) for item in text.split(':') if '=' in item)


def tunables_with_hugepages(current: str) -> str:
  """GLIBC_TUNABLES with ``glibc.malloc.hugetlb=1`` and ``KEEP_FREED`` added to what it holds.

  A tunable already named in ``current`` keeps its value.
  """
  named = _tunables(current)
  added = [f'{k}={v}' for k, v in {TUNABLE: '1', **KEEP_FREED}.items() if k not in named]
  return ':'.join(([current] if current else []) + added)


def keeps_freed_memory(environ=None) -> bool:
  """Whether this process's glibc keeps large freed blocks (``KEEP_FREED`` is in effect)."""
  environ = os.environ if environ is None else environ
  held = _tunables(environ.get('GLIBC_TUNABLES', ''))
  return all(held.get(k) == v for k, v in KEEP_FREED.items())


def run_cpu_computations_inline() -> None:
  """Single-device CPU computations run in the calling thread: their buffers then come
  from glibc's main heap, which ``KEEP_FREED`` keeps (module docstring). Call it before
  the first computation; later, jax's CPU backend has started and it changes nothing."""
  import jax
  try:
    jax.config.update(ASYNC_DISPATCH, False)
  except AttributeError:  # a jax without the option: computations stay asynchronous, nothing breaks
    print(f'[llm_jax] this jax has no {ASYNC_DISPATCH} option; CPU steps map their temporaries '
          'afresh each step (llm_jax/hostmem.py).', file=sys.stderr, flush=True)


def describe() -> dict:
  """This process's settings, for benchmark records: the glibc tunables and jax's CPU dispatch."""
  import jax
  try:
    inline = not jax.config.read(ASYNC_DISPATCH)
  except AttributeError:  # a jax without the option (as in run_cpu_computations_inline)
    inline = False
  return dict(glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''), keeps_freed_memory=keeps_freed_memory(),
              cpu_computations_inline=inline)


def setup() -> None:
  """What the entry points call first: ``reexec_with_hugepages()``, then, where glibc
  keeps freed memory, ``run_cpu_computations_inline()``. Returns only where it does
  not re-execute."""
  reexec_with_hugepages()
  if keeps_freed_memory():
    run_cpu_computations_inline()


def reexec_with_hugepages() -> None:
  """Re-executes this process's command line with the tunable set; returns only where it does not.

  Call it before anything starts threads or does work worth keeping: ``os.execv``
  replaces the process image on the spot.
  """
  if why_not():
    return
  before = os.environ.get('GLIBC_TUNABLES')
  os.environ[START_TIME] = _INHERITED_START or repr(time.time())
  os.environ['GLIBC_TUNABLES'] = tunables_with_hugepages(before or '')
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execv(sys.executable, [sys.executable] + list(sys.orig_argv[1:]))
  except OSError as e:  # no executable to run: go on as we are, without huge pages
    os.environ.pop(START_TIME, None)
    if before is None:
      os.environ.pop('GLIBC_TUNABLES', None)
    else:
      os.environ['GLIBC_TUNABLES'] = before
    print(f'[llm_jax] could not re-execute with {TUNABLE}=1 ({e}); running without huge pages.',
          file=sys.stderr, flush=True)


def process_start_time(default: float) -> float:
  """When this command started: the first process's time if it re-executed, else ``default``."""
  try:
    return float(_INHERITED_START)
  except (TypeError, ValueError):
    return default


# ----------------------------------------------------------------------------- notebooks

KERNEL_NAME = 'llm_jax'


def why_not_here() -> str:
  """``why_not()`` for a process started afresh here, whatever this one's GLIBC_TUNABLES hold:
  why a kernel started with the tunables would not get them ('' if it would)."""
  return why_not({k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'})


def kernel_json() -> dict:
  """A Jupyter kernel spec for this Python whose processes start with the tunables set (where
  this machine can use them), so a notebook gets what ``setup()`` gives the command line."""
  env = {}
  if not why_not_here():
    env['GLIBC_TUNABLES'] = tunables_with_hugepages(os.environ.get('GLIBC_TUNABLES', ''))
  return {'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
          'display_name': 'Python 3 (llm_jax)', 'language': 'python', 'env': env,
          'metadata': {'debugger': True}}


def install_kernel(user: bool = True, prefix: str | None = None) -> str:
  """Installs ``kernel_json()`` as the Jupyter kernel ``llm_jax``; returns where it went."""
  import json
  import tempfile
  from jupyter_client.kernelspec import KernelSpecManager
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, 'kernel.json'), 'w') as f:
      json.dump(kernel_json(), f, indent=1)
    return KernelSpecManager().install_kernel_spec(tmp, KERNEL_NAME, user=user and prefix is None, prefix=prefix)


def notebook() -> dict:
  """The first call of a notebook, before any computation: what ``setup()`` does for the
  command line, as far as a running kernel allows. Where the kernel started with the tunables
  (the ``llm_jax`` kernel, ``python -m llm_jax.hostmem install-kernel``) CPU computations then
  run inline and reuse their memory; elsewhere it says how to get that kernel (where this
  machine could use it) and changes nothing. Returns ``describe()``."""
  if keeps_freed_memory():
    run_cpu_computations_inline()
  elif not why_not_here():
    print(f'[llm_jax] this kernel started without {TUNABLE} and the freed-memory tunables, so CPU steps map '
          f'their temporaries afresh (slower); run `python -m llm_jax.hostmem install-kernel` and pick the '
          f'"Python 3 (llm_jax)" kernel.', file=sys.stderr, flush=True)
  return describe()


def _parser():
  import argparse
  parser = argparse.ArgumentParser(prog='python -m llm_jax.hostmem', description='Host memory for notebooks.')
  sub = parser.add_subparsers(dest='command', required=True)
  install = sub.add_parser('install-kernel', help='install the Jupyter kernel "llm_jax" (the command line\'s host '
                           'memory setup for notebooks)')
  install.add_argument('--prefix', default=None, help='install under this prefix (e.g. sys.prefix of a venv)')
  install.add_argument('--system', action='store_true', help='install system-wide instead of for this user')
  return parser


if __name__ == '__main__':
  _args = _parser().parse_args()
  print(install_kernel(user=not _args.system, prefix=_args.prefix))
