r"""Decoding's step time with and without XLA:CPU's YNNPACK dot fusions, one process.

  python experiments/generate_vs_hf/ynn_probe.py none LIBRARY_FUSION_TYPE_DOT+LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT

Each argument is a value of ``xla_cpu_experimental_ynn_fusion_type`` ('+' for ',';
'none': no option, the process default llm_jax sets, fusions off), passed to the decode
program's ``compiler_options``. GPT-2 small shapes with random weights, batch 1, a
10-token prompt, 40 new tokens, greedy and 5 beams; the best of two timed calls after a
compiling one, printed as ms per step.
"""

import functools
import sys
import time

import llm_jax  # noqa: F401  (first: its XLA defaults are set before JAX starts)
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import generation
from llm_jax.generation import api
from llm_jax.models import kinds
from llm_jax.models.layers import TransformerConfig


def main(options):
  cfg = TransformerConfig(vocab_size=50257, num_layers=12, num_heads=12, num_kv_heads=12, emb_dim=768, head_dim=64,
                          mlp_dim=3072, max_len=1024, use_bias=True)
  kind = kinds.build('decoder', cfg)
  shapes = jax.eval_shape(kind.init, jax.random.key(0), kind.example_batch(1, 8))['params']
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(rs.normal(0, 0.02, s.shape).astype(np.float32)), nn.meta.unbox(shapes))
  prompt = rs.randint(0, cfg.vocab_size, (1, 10)).astype(np.int32)
  for option in options:
    compiler_options = None if option == 'none' else {'xla_cpu_experimental_ynn_fusion_type': option.replace('+', ',')}
    jitted = jax.jit(api._decode, static_argnames=('kind_name', 'cfg', 'settings'),  # pylint: disable=protected-access
                     compiler_options=compiler_options)
    api.compiled = functools.lru_cache(maxsize=None)(lambda backend, jitted=jitted: jitted)
    for name, kw in (('greedy', {}), ('beam5', dict(num_beams=5, early_stopping=True))):
      run = lambda: generation.decode(kind, params, prompt, max_new_tokens=40, **kw).tokens
      jax.block_until_ready(run())
      best = float('inf')
      for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - start)
      print(option, name, round(best * 1000 / 40, 1), 'ms/step', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:] or ['none', 'LIBRARY_FUSION_TYPE_DOT+LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'])
