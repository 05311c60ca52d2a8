r"""Samples text from a trained run.

  python -m llm_jax.sample --workdir=runs/default --prompt='The ' --max_new_tokens=100 \
      [--temperature=0.8 --top_k=0 --top_p=1.0 --seed=0 --num_samples=1]

Sampling flags left unset take the run's ``config.sample`` values (``max_new_tokens``
shortened to what fits the model's positions after the prompt). An empty prompt
starts a fresh document: generation is seeded with the tokenizer's eos token, the
token that separates documents in training. ``sample_text`` is the same thing as a
function, for notebooks and for the training loop's end-of-run sample.
"""

if __name__ == '__main__':
  from llm_jax import hostmem
  hostmem.setup()  # before anything starts threads (see llm_jax/hostmem.py)

import sys  # noqa: E402

from absl import flags
import jax
import numpy as np

from llm_jax import cli
from llm_jax import errors
from llm_jax import generate
from llm_jax.data import tokenizers
from llm_jax.models.layers import TransformerConfig

_SETTINGS = ('max_new_tokens', 'temperature', 'top_k', 'top_p')
FLAGS = flags.FLAGS


def prompt_tokens(tokenizer, prompt: str, max_len: int, max_new_tokens: int) -> list[int]:
  """The prompt's token ids, [eos_id] if it is empty, cut from the left to fit max_len.

  At most max_len - max_new_tokens tokens are kept (the most recent ones), with a
  logged warning; if max_new_tokens alone fills max_len nothing is cut and
  ``generate`` raises its error.
  """
  unknown = tokenizers.unknown_characters(tokenizer, prompt)
  if unknown:
    shown = ', '.join(f'{c!r} ×{n}' for c, n in sorted(unknown.items(), key=lambda x: -x[1])[:10])
    print(f'[llm_jax] the prompt has {sum(unknown.values())} character(s) the {tokenizer.kind} tokenizer never '
          f'saw in training ({shown}{", ..." if len(unknown) > 10 else ""}); each is encoded as the unknown '
          f'token and shows as U+FFFD.', file=sys.stderr, flush=True)
  ids = [int(i) for i in tokenizer.encode(prompt)] or [tokenizer.eos_id]
  keep = max_len - max_new_tokens
  if 0 < keep < len(ids):
    print(f'[llm_jax] the prompt has {len(ids)} tokens; keeping its last {keep} so that {max_new_tokens} new '
          f'tokens fit the model\'s {max_len} positions.', file=sys.stderr, flush=True)
    ids = ids[-keep:]
  return ids


def sample_text(model_cfg: TransformerConfig, params, tokenizer, prompt: str, *,
                max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
                num_samples: int = 1, kind: str = 'decoder') -> list[str]:
  """num_samples continuations of ``prompt``, each returned as prompt + continuation.

  ``tokenizer`` has encode(str) -> ids, decode(ids) -> str and eos_id; a sample ends
  at its first eos token (not included). Samples are one batch under
  ``jax.random.PRNGKey(seed)``. Raises ValueError on bad settings (see ``generate``).
  """
  ids = prompt_tokens(tokenizer, prompt, model_cfg.max_len, max_new_tokens)
  batch = np.tile(np.asarray(ids, np.int32), (num_samples, 1))
  eos_id = tokenizer.eos_id
  tokens = generate.generate(model_cfg, params, batch, max_new_tokens=max_new_tokens,
                             rng=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
                             top_p=top_p, eos_id=eos_id, kind=kind)
  texts = []
  for row in np.asarray(tokens).tolist():
    if eos_id in row:
      row = row[:row.index(eos_id)]
    texts.append(prompt + tokenizer.decode(row))
  return texts


def define_flags():
  """Registers the CLI's flags.

  Called only when run as a program, so that importing ``sample_text`` beside another
  entry point (llm_jax.main has --workdir too) defines no duplicate flags.
  """
  flags.DEFINE_string('workdir', None, "A training run's workdir (config.json and checkpoints).")
  flags.DEFINE_string('prompt', '', 'Text to continue; empty starts a fresh document.')
  flags.DEFINE_integer('max_new_tokens', None, 'Tokens to generate (default: config.sample).')
  flags.DEFINE_float('temperature', None, '0 = greedy (default: config.sample).')
  flags.DEFINE_integer('top_k', None, 'Keep the k most likely; 0 = off (default: config.sample).')
  flags.DEFINE_float('top_p', None, 'Nucleus mass in (0, 1]; 1 = off (default: config.sample).')
  flags.DEFINE_integer('seed', 0, 'Seed of the sampling key.')
  flags.DEFINE_integer('num_samples', 1, 'Samples of the same prompt, drawn as one batch.')
  flags.mark_flag_as_required('workdir')


def main(argv):
  cli.no_positional(argv)
  if FLAGS.num_samples < 1:
    raise errors.ConfigError(f'--num_samples={FLAGS.num_samples} must be at least 1.')
  from llm_jax import checkpoint  # here, so importing sample_text needs no checkpoint stack
  config, kind, params, tokenizer = checkpoint.load_for_inference(FLAGS.workdir)
  model_cfg = kind.cfg
  settings = {name: config.sample[name] if FLAGS[name].value is None else FLAGS[name].value
              for name in _SETTINGS}
  room = model_cfg.max_len - max(1, len(tokenizer.encode(FLAGS.prompt)))
  if FLAGS.max_new_tokens is None and settings['max_new_tokens'] > room > 0:
    settings['max_new_tokens'] = room  # the run's default does not fit after this prompt
    print(f'[llm_jax] generating {room} tokens: the model has {model_cfg.max_len} positions '
          f'(--max_new_tokens sets it).', file=sys.stderr, flush=True)
  try:
    texts = sample_text(model_cfg, params, tokenizer, FLAGS.prompt, seed=FLAGS.seed,
                        num_samples=FLAGS.num_samples, kind=config.model.kind, **settings)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None
  for i, text in enumerate(texts):
    print(f'--- sample {i + 1}/{len(texts)}')
    print(text)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
