"""Text in, text out: prompts through a tokenizer, ``api.decode``, and back.

What the sample command, the training loop's end-of-run sample and its eval-time
samples share. A ``tokenizer`` is anything with encode(str) -> ids, decode(ids) -> str
and eos_id (llm_jax's tokenizers, or a Hugging Face directory's through
``tokenizers``).
"""

import sys
from typing import NamedTuple, Optional, Sequence, Union

import jax
import numpy as np

from llm_jax.data import tokenizers
from llm_jax.generation import api


class Completion(NamedTuple):
  text: str                  # the prompt followed by the continuation (cut before its eos token); an
                             # encoder-decoder's output alone (its translation of the prompt)
  score: Optional[float]     # beam search's score; None when sampled


def _note(message: str) -> None:
  print(f'[llm_jax] {message}', file=sys.stderr, flush=True)


def early_stopping_value(text) -> Union[bool, str]:
  """'true' | 'false' | 'never' (the sample command's flag, config.sample.early_stopping) -> True | False | 'never'.

  Anything else is returned as given, for ``api.check`` to refuse in one line."""
  return {'true': True, 'false': False, 'never': 'never'}.get(str(text).lower(), text)


def config_settings(sample) -> dict:
  """``complete``'s decoding settings from ``config.sample``: beam search is greedy (its
  temperature, top_k and top_p are for one beam)."""
  beams = sample.num_beams > 1
  return dict(max_new_tokens=sample.max_new_tokens, num_beams=sample.num_beams,
              temperature=0.0 if beams else sample.temperature, top_k=sample.top_k, top_p=sample.top_p,
              length_penalty=sample.length_penalty, early_stopping=early_stopping_value(sample.early_stopping))


def _name_unknown(tokenizer, text: str, note) -> None:
  unknown = tokenizers.unknown_characters(tokenizer, text)
  if unknown:
    shown = ', '.join(f'{c!r} ×{n}' for c, n in sorted(unknown.items(), key=lambda x: -x[1])[:10])
    note(f'the prompt has {sum(unknown.values())} character(s) the {tokenizer.kind} tokenizer never saw in '
         f'training ({shown}{", ..." if len(unknown) > 10 else ""}); each is encoded as the unknown token and '
         'shows as U+FFFD.')


def prompt_ids(tokenizer, prompt: str, max_len: int, max_new_tokens: int, note=_note) -> list[int]:
  """The prompt's token ids, [eos_id] if it is empty, cut from the left to fit max_len.

  Characters the tokenizer has no token for are named once with their counts (a
  character vocabulary encodes each as its unknown token); at most max_len -
  max_new_tokens tokens are kept (the most recent ones), with a note. If max_new_tokens
  alone fills max_len nothing is cut, and ``api.decode`` raises its error.
  """
  _name_unknown(tokenizer, prompt, note)
  ids = [int(i) for i in tokenizer.encode(prompt)] or [tokenizer.eos_id]
  keep = max_len - max_new_tokens
  if 0 < keep < len(ids):
    note(f'the prompt has {len(ids)} tokens; keeping its last {keep} so that {max_new_tokens} new tokens fit '
         f"the model's {max_len} positions.")
    ids = ids[-keep:]
  return ids


def complete(kind, params, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, seed: int = 0,
             num_return_sequences: int = 1, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping=False,
             note=_note) -> list[list[Completion]]:
  """For each prompt, ``num_return_sequences`` completions (best beam first), decoded as one
  left-padded batch under ``jax.random.key(seed)``. Each continuation ends at its first eos
  token (not included). An encoder-decoder takes each prompt as its source (``source_batch``)
  and its completions are its outputs alone. Raises ValueError on bad settings (see ``api.decode``)."""
  cfg = kind.cfg
  settings = dict(max_new_tokens=max_new_tokens, rng=jax.random.key(seed), temperature=temperature, top_k=top_k,
                  top_p=top_p, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                  num_return_sequences=num_return_sequences, eos_ids=(tokenizer.eos_id,))
  seq2seq = getattr(kind, 'encoder_decoder', False)
  if seq2seq:
    sources = [source_ids(tokenizer, p, cfg.max_len, note) for p in prompts]
    start = np.full((len(prompts), 1), kind.decoder_start_id, np.int32)
    out = api.decode(kind, params, start, inputs=source_batch(sources, tokenizer.pad_id), pad_id=tokenizer.pad_id,
                     **settings)
  else:
    rows = [prompt_ids(tokenizer, p, cfg.max_len, max_new_tokens, note) for p in prompts]
    batch, lengths = api.left_padded(rows, tokenizer.eos_id)
    out = api.decode(kind, params, batch, lengths=lengths, **settings)
  tokens, new = np.asarray(out.tokens), np.asarray(out.lengths)
  scores = None if out.scores is None else np.asarray(out.scores)
  results = []
  for i, prompt in enumerate(prompts):
    row = []
    for j in range(tokens.shape[1]):
      ids = tokens[i, j, :new[i, j]].tolist()
      if ids and ids[-1] == tokenizer.eos_id:
        ids = ids[:-1]
      text = tokenizer.decode(ids) if seq2seq else prompt + tokenizer.decode(ids)
      row.append(Completion(text, None if scores is None else float(scores[i, j])))
    results.append(row)
  return results


def source_ids(tokenizer, source: str, max_len: int, note=_note) -> list[int]:
  """An encoder-decoder's source ids as the seq2seq featurizer makes them: the text's tokens, then eos,
  the text cut from the end to fit ``max_len`` (with a note); unknown characters are named as for a prompt."""
  _name_unknown(tokenizer, source, note)
  ids = [int(i) for i in tokenizer.encode(source)]
  if len(ids) + 1 > max_len:
    note(f'the source has {len(ids) + 1} tokens with its eos; keeping its first {max_len - 1} and the eos for '
         f"the model's {max_len} positions.")
    ids = ids[:max_len - 1]
  return ids + [tokenizer.eos_id]


def source_batch(rows: Sequence[Sequence[int]], pad_id: int, width: int = 0) -> dict:
  """``api.decode``'s inputs of an encoder-decoder: sources right-padded to ``width`` (default: the
  longest), as ``encoder_inputs`` and ``encoder_segment_ids`` (1 on tokens, 0 on padding)."""
  width = max(width, max(len(r) for r in rows))
  inputs = np.full((len(rows), width), pad_id, np.int32)
  segments = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    inputs[i, :len(row)], segments[i, :len(row)] = row, 1
  return {'encoder_inputs': inputs, 'encoder_segment_ids': segments}
