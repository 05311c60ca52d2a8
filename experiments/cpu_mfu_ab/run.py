"""In-process A/B of train-step variants: which change makes the compiled step faster?

  python experiments/cpu_mfu_ab/run.py --variant=base: \\
      --variant='standin:model.attention_kernel=standin' --variant='xla:model.attention_kernel=xla'
  python experiments/cpu_mfu_ab/run.py --tiny --variant=a: --variant='b:model.attention_block=32'

Every ``--variant=NAME:key=value,key=value`` is the config (``--config``, by default
configs/shakespeare_char.py at batch 16 with dropout 0) with those overrides. All
variants are compiled in this one process and timed in alternating rounds (``--steps``
steps each), a float32 2048² matrix product measured between rounds as the bench does,
so a busy machine slows every variant alike; each variant's fastest round gives its step
time, MFU against the highest peak, and the cores the process kept busy in that round
(CPU time over wall time, from ``getrusage``). Separate processes (``llm_jax.bench --sweep``) see
run-to-run spreads of about ±5% on a shared 2-core machine, larger than most effects
worth testing.

A key that starts with ``xla_`` is an XLA option for that variant's compilation alone
(``compile(compiler_options=...)``), so XLA flags can be compared in one process too:
``--variant='notree:xla_disable_hlo_passes=tree_reduction_rewriter'``. Options that are
lists of enums take the enum names, e.g.
``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE``.

Nothing here checks numerics: it answers "how much time is this part of the step?".
``kernels.py`` registers attention kernels for that: ``model.attention_kernel=standin``
swaps attention for ``q * k + v`` (wrong values, same shapes, cheap and differentiable), so
base minus standin is what attention costs in the step; ``products`` and ``nomask`` leave
out the softmax and mask, ``chunks2/4/8`` split attention into independent pieces.
``attention.py`` times the kernels alone. Writes ``--out`` (JSON) when given.
"""

import time

_START = time.time()

import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Optional  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # kernels.py

from llm_jax import hostmem  # noqa: E402

hostmem.setup()  # as the bench and training do (llm_jax/hostmem.py)
_START = hostmem.process_start_time(_START)  # the first process's start, if it re-executed

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from llm_jax.bench import common as bench  # noqa: E402
from llm_jax import config as config_lib  # noqa: E402
from llm_jax import perf  # noqa: E402

import kernels  # noqa: E402,F401  (registers standin, products, nomask, chunks2/4/8)

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'configs/shakespeare_char.py', 'Config file every variant starts from.')
flags.DEFINE_multi_string('variant', [], 'NAME:key=value,key=value (repeat; at least one).')
flags.DEFINE_integer('steps', 3, 'Timed steps per round.')
flags.DEFINE_integer('rounds', 5, 'Alternating rounds; each variant reports its fastest.')
flags.DEFINE_bool('tiny', False, 'Tiny shapes (2 layers, width 64, T 64, batch 4): a smoke test.')
flags.DEFINE_string('out', '', 'Write the results here as JSON.')

BASE = {'train.batch_size': 16, 'model.dropout_rate': 0.0}
TINY = {'model.num_layers': 2, 'model.num_heads': 2, 'model.emb_dim': 64, 'data.seq_len': 64,
        'train.batch_size': 4, 'model.attention_block': 16}


def _value(text: str):
  """'3' -> 3, '0.5' -> 0.5, 'True' -> True, anything else stays a string."""
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {'True': True, 'False': False}.get(text, text)


def parse_variant(spec: str) -> tuple[str, dict]:
  """'name:a.b=1,c.d=x' -> ('name', {'a.b': 1, 'c.d': 'x'}); a ValueError naming the format."""
  name, sep, body = spec.partition(':')
  if not sep or not name:
    raise ValueError(f'--variant={spec!r}: expected NAME:key=value,key=value (NAME: for no overrides).')
  overrides = {}
  for item in filter(None, body.split(',')):
    key, eq, value = item.partition('=')
    if not eq:
      raise ValueError(f'--variant={spec!r}: {item!r} is not key=value.')
    overrides[key.strip()] = _value(value.strip())
  return name, overrides


@dataclasses.dataclass
class Variant:
  """One variant's compiled step, its running state and the seconds per step of each round."""
  name: str
  overrides: dict
  tokens: int  # per step
  trainer: object
  step: object
  state: object
  batch: dict
  times: list = dataclasses.field(default_factory=list)
  cores: list = dataclasses.field(default_factory=list)  # process CPU time / wall time, per round


def split_overrides(overrides: dict) -> tuple[dict, dict]:
  """(config overrides, XLA compiler options): keys starting with 'xla_' are the latter."""
  xla = {k: v for k, v in overrides.items() if k.startswith('xla_')}
  return {k: v for k, v in overrides.items() if k not in xla}, xla


def build(name: str, overrides: dict, config, compiler_options: Optional[dict] = None) -> Variant:
  """The variant's trainer and compiled step, called once (compiled and warm)."""
  from llm_jax.train import loop
  dataset = bench.synthetic_dataset(config)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = loop.build_trainer(config, workdir, dataset=dataset)
  with trainer.context():
    state = trainer.init()
    batch = trainer.device_batch(dataset.train_batch(0))
    try:
      step, _, _ = bench.compile_step(trainer, state, batch, compiler_options)
    except jax.errors.JaxRuntimeError as e:
      if not compiler_options or 'INVALID_ARGUMENT' not in str(e):
        raise
      raise ValueError(f'--variant {name}: XLA rejects {compiler_options}: {str(e).splitlines()[0]}') from None
    state, metrics = step(state, batch)  # first call: warm-up
    jax.block_until_ready(metrics)
  return Variant(name, overrides, config.train.batch_size * config.data.seq_len, trainer, step, state, batch)


def run(variants: list[tuple[str, dict]], *, config_path: str, steps: int, rounds: int, tiny: bool) -> dict:
  built = []
  for name, overrides in variants:
    settings, xla = split_overrides(overrides)
    config = config_lib.from_file(config_path, **{**BASE, **(TINY if tiny else {}), **settings})
    built.append(build(name, overrides, config, xla))
  peak = 0.0
  for _ in range(rounds):
    for v in built:
      with v.trainer.context():
        start, cpu = time.perf_counter(), perf.cpu_seconds()
        for _ in range(steps):
          v.state, metrics = v.step(v.state, v.batch)
        jax.block_until_ready(metrics)
        wall = time.perf_counter() - start
        v.times.append(wall / steps)
        v.cores.append((perf.cpu_seconds() - cpu) / wall)
      gc.collect()
      peak = max(peak, perf.measure_peak_flops('float32')[0])
  rows = [dict(name=v.name, overrides=v.overrides, step_ms=round(1e3 * min(v.times), 2),
               median_ms=round(1e3 * float(np.median(v.times)), 2),
               cores=round(v.cores[int(np.argmin(v.times))], 2),
               mfu=round(v.tokens * v.trainer.flops_per_token / min(v.times) / peak, 4)) for v in built]
  return dict(config=config_path, tiny=tiny, steps=steps, rounds=rounds, peak_tflops=round(peak / 1e12, 4),
              variants=rows, seconds=round(time.time() - _START, 1))


def main(argv):
  del argv
  if not FLAGS.variant:
    raise app.UsageError('give at least one --variant=NAME:key=value,... (e.g. --variant=base:)')
  try:
    variants = [parse_variant(v) for v in FLAGS.variant]
  except ValueError as e:
    raise app.UsageError(str(e))
  names = [n for n, _ in variants]
  if len(set(names)) != len(names):
    raise app.UsageError(f'variant names repeat: {names}')
  config_path = FLAGS.config
  if not os.path.exists(config_path) and (ROOT / config_path).exists():
    config_path = str(ROOT / config_path)  # configs/NAME.py from outside the repository
  try:
    result = run(variants, config_path=config_path, steps=FLAGS.steps, rounds=FLAGS.rounds, tiny=FLAGS.tiny)
  except (config_lib.ConfigError, ValueError) as e:
    raise app.UsageError(str(e))
  for row in result['variants']:
    print(f"{row['name']:16s} {row['step_ms']:9.1f} ms/step (median {row['median_ms']:.1f})  "
          f"MFU {row['mfu']:.3f}  {row['cores']:.2f} cores")
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
  app.run(main)
