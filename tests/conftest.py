"""One persistent XLA compilation cache for the whole test session, in this process and in
every subprocess a test starts (they inherit the environment).

Many tests build the same tiny models again, in new trainers or new processes; the cache
turns their recompilations into reads. It holds the very executables a compilation would
produce, so results (bitwise comparisons included) are unchanged. Set
``LLM_JAX_TEST_NO_COMPILATION_CACHE=1`` to run without it.
"""

import os
import shutil
import tempfile

if os.environ.get('LLM_JAX_TEST_NO_COMPILATION_CACHE') != '1' and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='llm_jax_test_xla_cache_')
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR', '')
  if os.path.basename(cache).startswith('llm_jax_test_xla_cache_'):
    shutil.rmtree(cache, ignore_errors=True)
