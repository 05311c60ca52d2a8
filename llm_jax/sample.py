r"""Samples text from a trained run or a Hugging Face model.

  python -m llm_jax.sample --workdir=runs/default --prompt='The ' --max_new_tokens=100 \
      [--temperature=0.8 --top_k=0 --top_p=1.0 --seed=0 --num_return_sequences=1]
  python -m llm_jax.sample --model=DIR_OR_HUB_ID --prompt='Hello' --max_length=50 \
      --num_beams=5 --early_stopping=true

``--workdir`` (a run) and ``--model`` (a run, or a Hugging Face model directory or Hub id)
are the same thing. For a run, sampling flags left unset take its ``config.sample``
values (``max_new_tokens`` shortened to what fits the model's positions after the
prompt); a Hugging Face model decodes greedily, 50 new tokens, unless told otherwise.
``--max_length`` counts the prompt, as Hugging Face's does. An empty prompt starts a fresh
document: generation is seeded with the tokenizer's eos token. ``--num_beams`` > 1 is beam
search; each output is printed with its score. An encoder-decoder (T5) translates the prompt
instead of continuing it: its output alone is printed, and ``--max_length`` counts the decoder's
start token, as Hugging Face's does.
"""

if __name__ == '__main__':
  from llm_jax import hostmem
  hostmem.setup()  # before anything starts threads (see llm_jax/hostmem.py)

import sys  # noqa: E402

from absl import flags

from llm_jax import cli
from llm_jax import errors

_SETTINGS = ('max_new_tokens', 'temperature', 'top_k', 'top_p', 'num_beams', 'length_penalty', 'early_stopping')
_HF_DEFAULTS = dict(max_new_tokens=50, temperature=0.0, top_k=0, top_p=1.0, num_beams=1, length_penalty=1.0,
                    early_stopping='false')
FLAGS = flags.FLAGS


def define_flags():
  """Registers the CLI's flags (only when run as a program: llm_jax.main has --workdir too)."""
  flags.DEFINE_string('workdir', None, "A training run's workdir (config.json and checkpoints).")
  flags.DEFINE_string('model', None, "A run's workdir, or a Hugging Face model directory or Hub id.")
  flags.DEFINE_string('prompt', '', 'Text to continue; empty starts a fresh document.')
  flags.DEFINE_integer('max_new_tokens', None, 'Tokens to generate (default: config.sample, or 50).')
  flags.DEFINE_integer('max_length', None, 'Prompt + new tokens, as Hugging Face counts (instead of '
                       '--max_new_tokens).')
  flags.DEFINE_float('temperature', None, '0 = greedy (default: config.sample, or 0).')
  flags.DEFINE_integer('top_k', None, 'Keep the k most likely; 0 = off (default: config.sample, or 0).')
  flags.DEFINE_float('top_p', None, 'Nucleus mass in (0, 1]; 1 = off (default: config.sample, or 1).')
  flags.DEFINE_integer('num_beams', None, 'Beam search with this many beams; 1 = off (default: config.sample).')
  flags.DEFINE_float('length_penalty', None, "Beam scores are sum log p / length ** this (default: 1).")
  flags.DEFINE_enum('early_stopping', None, ['true', 'false', 'never'],
                    "Beam search stops: true = when num_beams are finished; false = when the best running beam "
                    "cannot win at its current length; never = when it cannot win at max length.")
  flags.DEFINE_integer('num_return_sequences', 1, 'Outputs per prompt: samples, or the best beams.')
  flags.DEFINE_integer('num_samples', None, 'The same as --num_return_sequences.')
  flags.DEFINE_integer('seed', 0, 'Seed of the sampling key.')


def main(argv):
  cli.no_positional(argv)
  if FLAGS.workdir and FLAGS.model:
    raise errors.ConfigError('give --workdir or --model, not both.')
  if not (FLAGS.workdir or FLAGS.model):
    raise errors.ConfigError('--workdir is required (a training run), or --model (a run, or a Hugging Face model '
                             'directory or Hub id).')
  count_flag = 'num_samples' if FLAGS.num_samples is not None else 'num_return_sequences'
  count = FLAGS[count_flag].value
  if count < 1:
    raise errors.ConfigError(f'--{count_flag}={count} must be at least 1.')
  from llm_jax import pretrained
  from llm_jax import workdir as workdir_lib
  from llm_jax.generation import text
  if FLAGS.workdir:
    workdir_lib.load_config(FLAGS.workdir)  # a run, or the one-line error that says what is missing
  source = FLAGS.workdir or FLAGS.model
  model = pretrained.from_pretrained(source)
  if model.tokenizer is None:
    raise errors.ConfigError(f'{source} has no tokenizer (tokenizer.json or vocab.txt); add the model\'s tokenizer '
                             'files to the directory.')
  config = model.report.get('config')
  defaults = dict(config.sample) if config is not None else _HF_DEFAULTS
  settings = {name: defaults.get(name, _HF_DEFAULTS[name]) if FLAGS[name].value is None else FLAGS[name].value
              for name in _SETTINGS}
  settings['early_stopping'] = text.early_stopping_value(settings['early_stopping'])
  if settings['num_beams'] > 1 and FLAGS.temperature is None:
    settings['temperature'] = 0.0  # beam search is greedy unless asked otherwise (and then refused, one line)
  max_len = model.kind.cfg.max_len
  # An encoder-decoder translates the prompt: its decoder starts from one start token (what --max_length counts).
  seq2seq = getattr(model.kind, 'encoder_decoder', False)
  prompt_len = 1 if seq2seq else max(1, len(model.tokenizer.encode(FLAGS.prompt)))
  if FLAGS.max_length is not None:
    if FLAGS.max_new_tokens is not None:
      raise errors.ConfigError('give --max_length or --max_new_tokens, not both.')
    if FLAGS.max_length <= prompt_len:
      raise errors.ConfigError(f'--max_length={FLAGS.max_length} leaves no room after the prompt\'s {prompt_len} '
                               f'tokens (it counts the prompt); raise it or give --max_new_tokens.')
    settings['max_new_tokens'] = FLAGS.max_length - prompt_len
  room = max_len - prompt_len
  if FLAGS.max_new_tokens is None and FLAGS.max_length is None and settings['max_new_tokens'] > room > 0:
    settings['max_new_tokens'] = room  # the default does not fit after this prompt
    print(f'[llm_jax] generating {room} tokens: the model has {max_len} positions (--max_new_tokens sets it).',
          file=sys.stderr, flush=True)
  try:
    outputs = text.complete(model.kind, model.params, model.tokenizer, [FLAGS.prompt], seed=FLAGS.seed,
                            num_return_sequences=count, **settings)[0]
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None
  for i, out in enumerate(outputs):
    score = '' if out.score is None else f' (score {out.score:.4f})'
    print(f'--- sample {i + 1}/{len(outputs)}{score}')
    print(out.text)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
