"""The entry points' re-execution with transparent huge pages (llm_jax/hostmem.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

from llm_jax import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVAILABLE = hostmem.why_not({}) == ''


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', hostmem.OPT_OUT, hostmem.START_TIME)}
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  env.update(extra)
  return env


def _run(code: str, **env) -> list[str]:
  out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=_clean_env(**env),
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


REEXEC = '''
    import os, sys, time
    print('started', os.getpid(), flush=True)
    from llm_jax import hostmem
    hostmem.reexec_with_hugepages()
    print('tunables', os.environ.get('GLIBC_TUNABLES', ''))
    print('start_time_passed_on', hostmem.START_TIME in os.environ)
    print('first_start_known', hostmem.process_start_time(-1.0) > 0)
'''


KEEP = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776'


def test_tunables_keep_what_was_there():
  assert hostmem.tunables_with_hugepages('') == 'glibc.malloc.hugetlb=1:' + KEEP
  assert hostmem.tunables_with_hugepages('glibc.malloc.arena_max=2') == \
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:' + KEEP
  # a tunable the user set keeps the user's value
  assert hostmem.tunables_with_hugepages('glibc.malloc.mmap_max=4') == \
      'glibc.malloc.mmap_max=4:glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=1099511627776'


def test_keeps_freed_memory_only_with_both_tunables_at_their_values():
  assert hostmem.keeps_freed_memory({'GLIBC_TUNABLES': hostmem.tunables_with_hugepages('')})
  assert not hostmem.keeps_freed_memory({})
  assert not hostmem.keeps_freed_memory({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'})
  assert not hostmem.keeps_freed_memory({'GLIBC_TUNABLES': hostmem.tunables_with_hugepages('glibc.malloc.mmap_max=4')})


def test_why_not_names_the_reason():
  assert 'LLM_JAX_HUGEPAGES=0' in hostmem.why_not({'LLM_JAX_HUGEPAGES': '0'})
  assert 'already' in hostmem.why_not({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})


@pytest.mark.skipif(not AVAILABLE, reason=f'no re-execution here: {hostmem.why_not({})}')
def test_reexecutes_once_with_the_tunable_and_same_pid():
  lines = _run(REEXEC, GLIBC_TUNABLES='glibc.malloc.arena_max=4')
  started = [line for line in lines if line.startswith('started')]
  assert len(started) == 2 and started[0] == started[1], lines  # exec keeps the PID
  assert 'tunables glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1:' + KEEP in lines
  assert 'start_time_passed_on False' in lines  # consumed, not inherited by children
  assert 'first_start_known True' in lines


@pytest.mark.skipif(not AVAILABLE, reason=f'no re-execution here: {hostmem.why_not({})}')
def test_a_failed_exec_goes_on_without_huge_pages():
  lines = _run('''
      import os, sys
      sys.executable = '/nonexistent/python'
      from llm_jax import hostmem
      hostmem.reexec_with_hugepages()
      print('went_on', os.environ.get('GLIBC_TUNABLES', 'unset'), hostmem.START_TIME in os.environ)
  ''', GLIBC_TUNABLES='glibc.malloc.arena_max=4')
  assert lines[-1] == 'went_on glibc.malloc.arena_max=4 False', lines


def test_opt_out_and_already_set_run_once():
  for env in ({'LLM_JAX_HUGEPAGES': '0'}, {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}):
    lines = _run(REEXEC, **env)
    assert len([line for line in lines if line.startswith('started')]) == 1, (env, lines)
    assert 'first_start_known False' in lines


FAULTS = '''
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # as XLA:CPU's temporaries: malloc'ed, written, freed (numpy would madvise itself)
        p = libc.malloc(64 << 20)
        ctypes.memset(p, 1, 64 << 20)
        libc.free(p)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


@pytest.mark.skipif(not AVAILABLE, reason=f'no huge pages here: {hostmem.why_not({})}')
def test_the_tunable_removes_most_page_faults_of_large_buffers():
  plain = int(_run(FAULTS, LLM_JAX_HUGEPAGES='0')[-1])
  huge = int(_run(FAULTS, GLIBC_TUNABLES='glibc.malloc.hugetlb=1')[-1])
  assert plain > 100_000  # 10 x 16384 pages of 4 KiB
  assert huge < plain / 10, (plain, huge)


STEP_FAULTS = '''
    import os, resource
    from llm_jax import hostmem
    hostmem.setup()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: (x @ x.T).max())  # the product's 64 MiB result is a temporary
    x = jnp.ones((4096, 64), jnp.float32)
    for _ in range(25):  # jax's own first calls fault too (about 850, then 280, per call), for about 12 calls
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        f(x).block_until_ready()
    print(jax.config.read('jax_cpu_enable_async_dispatch'))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


@pytest.mark.skipif(not AVAILABLE, reason=f'no huge pages here: {hostmem.why_not({})}')
def test_setup_reuses_a_computations_temporaries_from_call_to_call():
  """setup(): XLA:CPU's 64 MiB temporary is mapped once, not once per call (module docstring)."""
  inline, kept = _run(STEP_FAULTS)[-2:]
  async_, huge_only = _run(STEP_FAULTS, GLIBC_TUNABLES='glibc.malloc.hugetlb=1')[-2:]
  opted_out = _run(STEP_FAULTS, LLM_JAX_HUGEPAGES='0')[-2]
  assert (inline, async_, opted_out) == ('False', 'True', 'True')
  assert int(huge_only) >= 5 * 32 // 2  # a fresh 64 MiB each call: 32 huge pages or more 4 KiB ones
  assert int(kept) < 32, (kept, huge_only)  # not even one call's worth


def test_a_jax_without_the_dispatch_option_goes_on_with_a_notice(monkeypatch, capsys):
  monkeypatch.setattr(hostmem, 'ASYNC_DISPATCH', 'jax_option_this_jax_does_not_have')
  hostmem.run_cpu_computations_inline()
  assert 'has no jax_option_this_jax_does_not_have option' in capsys.readouterr().err


@pytest.mark.skipif(not AVAILABLE, reason=f'no re-execution here: {hostmem.why_not({})}')
def test_describe_records_the_settings_in_effect():
  code = '''
      from llm_jax import hostmem
      hostmem.setup()
      d = hostmem.describe()
      print(d['keeps_freed_memory'], d['cpu_computations_inline'], d['glibc_tunables'])
  '''
  assert _run(code)[-1] == 'True True glibc.malloc.hugetlb=1:' + KEEP
  assert _run(code, LLM_JAX_HUGEPAGES='0')[-1] == 'False False '
