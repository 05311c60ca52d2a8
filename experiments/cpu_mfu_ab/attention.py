"""Times attention kernels alone, forward and forward + backward, at a config's shapes.

  python experiments/cpu_mfu_ab/attention.py --kernel=blocked --kernel=chunks2 --kernel=xla

The operands are one layer's q, k, v at ``--config``'s shapes (default
configs/shakespeare_char.py at batch 16: [16, 256, 6, 64]) with the causal mask training
builds for one document per row. Each kernel is compiled once, forward and
``value_and_grad`` of ``sum(out * g)`` (g fixed and random, so every gradient is real),
and timed in ``--rounds`` alternating rounds of ``--iters`` calls; each kernel reports its
fastest round and the CPU cores it kept busy in that round (process CPU time over wall
time, from ``getrusage``). A kernel that computes attention is checked against ``xla``:
the largest difference of its output and gradients, relative to the largest reference
value; the timing stand-ins of ``kernels.py`` (standin, products, nomask) are not.
What a kernel costs alone need not be what it costs inside the train step, where other
work shares the cores: compare in the step with ``run.py``.
"""

import time

_START = time.time()

import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # kernels.py

from llm_jax import hostmem  # noqa: E402

hostmem.setup()  # as the bench and training do (llm_jax/hostmem.py)
_START = hostmem.process_start_time(_START)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llm_jax import config as config_lib  # noqa: E402
from llm_jax import perf  # noqa: E402
from llm_jax.models import attention_kernels, layers  # noqa: E402

import kernels  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('config', str(ROOT / 'configs' / 'shakespeare_char.py'), 'Config whose shapes to use.')
flags.DEFINE_multi_string('kernel', [], 'Attention kernel to time (repeat; at least one).')
flags.DEFINE_integer('batch', 16, 'Batch size.')
flags.DEFINE_integer('rounds', 5, 'Alternating rounds; each kernel reports its fastest.')
flags.DEFINE_integer('iters', 10, 'Calls per round.')
flags.DEFINE_bool('tiny', False, 'Tiny shapes (batch 4, T 64, 2 heads of 32, block 16): a smoke test.')
flags.DEFINE_string('out', '', 'Write the results here as JSON.')


def shapes(config_path: str, batch: int, tiny: bool) -> dict:
  """b, t, heads, kv_heads, head_dim and block of one attention layer of the config."""
  if tiny:
    return dict(b=4, t=64, heads=2, kv_heads=2, head_dim=32, block=16)
  config = config_lib.from_file(config_path)
  model = config_lib.model_config(config, vocab_size=256)
  return dict(b=batch, t=config.data.seq_len, heads=model.num_heads, kv_heads=model.num_kv_heads,
              head_dim=model.head_dim, block=model.attention_block)


def operands(s: dict, seed: int = 0):
  rng = np.random.default_rng(seed)
  q_shape, kv_shape = (s['b'], s['t'], s['heads'], s['head_dim']), (s['b'], s['t'], s['kv_heads'], s['head_dim'])
  q, k, v, g = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
                for shape in (q_shape, kv_shape, kv_shape, q_shape))
  segments = jnp.ones((s['b'], s['t']), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(s['t']), (s['b'], s['t']))
  mask = layers.attention_mask(segments, segments, positions, positions, causal=True)
  return (q, k, v), g, mask


def compiled(name: str, g, mask, block: int, args):
  """(forward, forward + backward), each compiled for these operands."""
  kernel = attention_kernels.get(name)
  forward = lambda q, k, v: kernel(q, k, v, mask=mask, causal=True, block=block)
  both = jax.value_and_grad(lambda q, k, v: jnp.sum(forward(q, k, v) * g), argnums=(0, 1, 2))
  return jax.jit(forward).lower(*args).compile(), jax.jit(both).lower(*args).compile()


def _relative_error(results, reference) -> float:
  return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
             for a, b in zip(jax.tree.leaves(results), jax.tree.leaves(reference)))


def run(names: list[str], *, config_path: str, batch: int, rounds: int, iters: int, tiny: bool) -> dict:
  s = shapes(config_path, batch, tiny)
  args, g, mask = operands(s)
  fns = {name: compiled(name, g, mask, s['block'], args) for name in names}
  reference = compiled('xla', g, mask, s['block'], args)
  expected = (reference[0](*args), reference[1](*args))
  errors = {name: None if name in kernels.WRONG_VALUES else
            _relative_error((fns[name][0](*args), fns[name][1](*args)), expected) for name in names}
  best = {(name, part): (float('inf'), 0.0) for name in names for part in (0, 1)}
  for _ in range(rounds):
    for name in names:
      for part in (0, 1):
        fn = fns[name][part]
        jax.block_until_ready(fn(*args))
        start, cpu = time.perf_counter(), perf.cpu_seconds()
        for _ in range(iters):
          out = fn(*args)
        jax.block_until_ready(out)
        wall = time.perf_counter() - start
        if wall / iters < best[name, part][0]:
          best[name, part] = (wall / iters, (perf.cpu_seconds() - cpu) / wall)
  rows = [dict(kernel=name, forward_ms=round(1e3 * best[name, 0][0], 3), forward_cores=round(best[name, 0][1], 2),
               train_ms=round(1e3 * best[name, 1][0], 3), train_cores=round(best[name, 1][1], 2),
               max_relative_error=errors[name]) for name in names]
  return dict(config=config_path, shapes=s, rounds=rounds, iters=iters, kernels=rows,
              seconds=round(time.time() - _START, 1))


def main(argv):
  del argv
  if not FLAGS.kernel:
    raise app.UsageError('give at least one --kernel=NAME (e.g. --kernel=blocked --kernel=chunks2)')
  for name in FLAGS.kernel:
    if name not in attention_kernels.names():
      raise app.UsageError(f'--kernel={name!r} is unknown; choose from {", ".join(attention_kernels.names())}.')
  if len(set(FLAGS.kernel)) != len(FLAGS.kernel):
    raise app.UsageError(f'kernels repeat: {FLAGS.kernel}')
  try:
    result = run(FLAGS.kernel, config_path=FLAGS.config, batch=FLAGS.batch, rounds=FLAGS.rounds,
                 iters=FLAGS.iters, tiny=FLAGS.tiny)
  except (config_lib.ConfigError, ValueError) as e:
    raise app.UsageError(str(e))
  for row in result['kernels']:
    error = '' if row['max_relative_error'] is None else f"  max rel. error {row['max_relative_error']:.1e}"
    print(f"{row['kernel']:10s} forward {row['forward_ms']:8.2f} ms ({row['forward_cores']:.2f} cores)  "
          f"forward+backward {row['train_ms']:8.2f} ms ({row['train_cores']:.2f} cores){error}")
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
  app.run(main)
