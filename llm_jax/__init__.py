"""llm_jax: GPT, BERT and T5 language models in JAX/Flax.

  model = llm_jax.from_pretrained('runs/shakespeare')     # a run's workdir, or a Hugging Face model
  sequences = llm_jax.generate(model, input_ids, max_length=50, num_beams=5, early_stopping=True)

(``generation.generate`` and ``pretrained.from_pretrained``, imported on first use.)

Importing the package sets XLA:CPU defaults before JAX starts its backend; each only
touches the CPU backend, and each was measured on 2 CPU cores (``python -m
llm_jax.bench``, README "Benchmarks and results"):

- ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK library fusions). Although
  the flag's help says its default list is empty, jaxlib 0.10.2 without it compiles
  matrix products, 2-D and batched, into ``__ynn_fusion``s; with it they run through
  XLA's Eigen path. The batched products of attention run at 125–165 GFLOP/s through
  YNN against 205–255 through Eigen on 2 cores, and the shakespeare_char step reached
  0.71 MFU with YNN against 0.73–0.75 without. It also keeps clear of the YNN-fusion
  miscompilations reported for jaxlib 0.11 on the CPU. Decoding programs, whose matrix
  products have a few rows, ask for the dot fusions back through their own compiler
  options (``generation.api.CPU_DECODE_OPTIONS``).
- ``--xla_cpu_prefer_vector_width=512``, only on CPUs with AVX-512: XLA's generated
  loops (GELU, softmax, norms, Adam) use 512-bit vectors instead of 256-bit ones;
  GELU's forward and backward run about twice as fast and the shakespeare_char step
  about 6% faster.

A flag is left alone if ``XLA_FLAGS`` already names it; none is set if
``LLM_JAX_KEEP_XLA_FLAGS=1``, or if a JAX backend was already running when llm_jax
was imported (then XLA has read its flags).
"""

import os


def _cpu_has(feature: str) -> bool:
  """Whether /proc/cpuinfo lists ``feature`` among the CPU flags (False where unreadable)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          return feature in line.split()
  except OSError:
    pass
  return False


def _xla_cpu_defaults() -> list[tuple[str, str]]:
  defaults = [('--xla_cpu_experimental_ynn_fusion_type', '')]
  if _cpu_has('avx512f'):
    defaults.append(('--xla_cpu_prefer_vector_width', '512'))
  return defaults


def _set_xla_cpu_defaults() -> None:
  if os.environ.get('LLM_JAX_KEEP_XLA_FLAGS') == '1':
    return
  flags = os.environ.get('XLA_FLAGS', '')
  added = [f'{name}={value}' for name, value in _xla_cpu_defaults() if name not in flags]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([flags] + added).strip()


_set_xla_cpu_defaults()


def __getattr__(name: str):
  """``llm_jax.generate`` and ``llm_jax.from_pretrained``, imported when first used (so that importing
  llm_jax starts no JAX backend before the defaults above are set)."""
  if name == 'generate':
    from llm_jax.generation import api
    return api.generate
  if name == 'from_pretrained':
    from llm_jax import pretrained
    return pretrained.from_pretrained
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
