"""llm_jax: GPT, BERT and T5 language models in JAX/Flax.

Importing the package sets one XLA:CPU default before JAX starts its backend
(``--xla_cpu_experimental_ynn_fusion_type=``: no YNNPACK library fusions). On 2 CPU
cores it makes the shakespeare_char train step about 5% faster (``python -m
llm_jax.bench``, README "Performance"), and it keeps clear of the YNN-fusion
miscompilations reported for jaxlib 0.11 on the CPU. The flag only touches the CPU
backend. It is left alone if ``XLA_FLAGS`` already names it, if
``LLM_JAX_KEEP_XLA_FLAGS=1``, or if a JAX backend was already running when llm_jax
was imported (then XLA has read its flags).
"""

import os

_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'


def _set_xla_cpu_defaults() -> None:
  if os.environ.get('LLM_JAX_KEEP_XLA_FLAGS') == '1':
    return
  flags = os.environ.get('XLA_FLAGS', '')
  if _YNN_FLAG in flags:
    return
  os.environ['XLA_FLAGS'] = f'{flags} {_YNN_FLAG}='.strip()


_set_xla_cpu_defaults()
