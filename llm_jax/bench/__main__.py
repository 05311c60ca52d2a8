"""``python -m llm_jax.bench``: the command line of the benchmarks (``llm_jax/bench/__init__.py``)."""

if __name__ == '__main__':
  from llm_jax import hostmem
  hostmem.setup()  # before anything starts threads (see llm_jax/hostmem.py)

import json  # noqa: E402

from absl import flags
from ml_collections import config_flags

from llm_jax import cli
from llm_jax import errors

MODES = ('train', 'decode', 'all', 'memory')
FLAGS = flags.FLAGS

def define_flags() -> None:
  """The command line's flags; defined on demand, so that importing this module (as
  the decode and sweep modules do) never defines them twice."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_enum('mode', 'train', MODES, 'What to measure (see the module docstring).')
  flags.DEFINE_integer('steps', 10, 'Timed train steps per round.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
  flags.DEFINE_integer('rounds', 3, 'Rounds of timed steps alternating with peak measurements.')
  flags.DEFINE_integer('vocab_size', -1, 'Synthetic vocabulary (-1: data.vocab_size for sentencepiece, '
                       '259 for bytes, 65 for characters as in Tiny Shakespeare).')
  flags.DEFINE_bool('check_reference', True, 'Refuse to report a config whose losses differ from the reference path.')
  flags.DEFINE_float('reference_rtol', -1.0, 'Relative loss tolerance of the reference check (-1: by dtype).')
  flags.DEFINE_string('decode_batch_sizes', '1,64', 'Decode batch sizes, comma-separated.')
  flags.DEFINE_integer('decode_new_tokens', 256, 'Tokens generated per row.')
  flags.DEFINE_integer('decode_prompt_len', 16, 'Prompt tokens per row.')
  flags.DEFINE_integer('decode_no_cache_max_tokens', 16,
                       'Time at most this many no-cache tokens and extrapolate the rest (0: time all).')
  flags.DEFINE_integer('decode_repeats', 2, 'Timed repeats of each cached decode (the fastest counts).')
  flags.DEFINE_integer('memory_devices', -1, 'Devices of the fsdp mesh in --mode=memory (-1: this process\'s '
                       'devices when more than one, else 8 simulated CPU devices).')
  flags.DEFINE_string('sweep', '', 'Configs to run one after another in fresh processes: comma-separated '
                      '"configs/NAME.py[:key=value;key=value]" entries, or a .txt (one a line) or .json file.')
  flags.DEFINE_string('sweep_out', 'bench_sweep', 'Sweep output prefix: PREFIX.json and PREFIX.md.')


def passthrough_flags() -> list[str]:
  """The measurement flags of this process, for the bench processes a sweep starts."""
  names = ('mode', 'steps', 'warmup', 'rounds', 'vocab_size', 'check_reference', 'reference_rtol',
           'decode_batch_sizes', 'decode_new_tokens', 'decode_prompt_len', 'decode_no_cache_max_tokens',
           'decode_repeats', 'memory_devices')
  return [f'--{n}={FLAGS[n].value}' for n in names]


def run(config, mode: str) -> dict:
  """The measurements of ``mode`` for one config, from the flags (the bench never samples text,
  so ``sample.prompt`` is cleared: its length checks do not apply)."""
  from llm_jax import hostmem
  from llm_jax.bench import common, decode, memory, train
  config = common.with_overrides(config, {'sample.prompt': ''})
  # how the host allocates XLA:CPU's buffers changes CPU step times (llm_jax/hostmem.py)
  result = {'mode': mode, 'host_memory': hostmem.describe()}
  if mode in ('train', 'all'):
    result.update(train.benchmark_training(config, steps=FLAGS.steps, warmup=FLAGS.warmup, rounds=FLAGS.rounds,
                                     vocab_size=FLAGS.vocab_size, check=FLAGS.check_reference,
                                     rtol=FLAGS.reference_rtol))
  if mode in ('decode', 'all'):
    result['decode'] = decode.benchmark_decoding(
        config, batch_sizes=[int(b) for b in FLAGS.decode_batch_sizes.split(',') if b.strip()],
        new_tokens=FLAGS.decode_new_tokens, prompt_len=FLAGS.decode_prompt_len,
        no_cache_max_tokens=FLAGS.decode_no_cache_max_tokens, repeats=FLAGS.decode_repeats,
        vocab_size=FLAGS.vocab_size)
  if mode == 'memory':
    result['memory'] = memory.benchmark_memory(config, devices=FLAGS.memory_devices, vocab_size=FLAGS.vocab_size)
  return result


def main(argv):
  cli.no_positional(argv)
  from llm_jax.bench import sweep
  if FLAGS.sweep:
    result = sweep.run_sweep(sweep.parse_entries(FLAGS.sweep), passthrough_flags(), FLAGS.sweep_out, mode=FLAGS.mode)
  elif FLAGS.config is None:
    raise errors.ConfigError('give --config=configs/NAME.py (or --sweep=...).')
  else:
    result = run(FLAGS.config, FLAGS.mode)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
