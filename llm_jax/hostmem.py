"""Transparent huge pages for XLA:CPU's buffers: the entry points re-execute once with a glibc tunable.

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
Python can switch it on. ``reexec_with_hugepages()``, called first thing by
``python -m llm_jax.main``, ``llm_jax.bench`` and ``llm_jax.sample``, replaces the
process (same PID, arguments, environment and open files) with the same command
line plus ``GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1``. It does nothing when the
tunable is already set (so it runs at most once), off Linux/glibc, on glibc older
than 2.35 (which ignores the tunable), when the kernel's transparent huge pages are
``never``, or when ``LLM_JAX_HUGEPAGES=0``. In a notebook or your own script, start
Python with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` set to get the same effect.
"""

import os
import sys
import time

TUNABLE = 'glibc.malloc.hugetlb'
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


def tunables_with_hugepages(current: str) -> str:
  """GLIBC_TUNABLES with ``glibc.malloc.hugetlb=1`` added to what it already holds."""
  return f'{current}:{TUNABLE}=1' if current else f'{TUNABLE}=1'


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
