"""Decoded evaluation of an encoder-decoder: BLEU on the first eval examples, and their translations.

``evaluate(trainer, params)`` decodes the first ``config.eval.bleu_examples`` eval examples
(``dataset.eval_examples``: source ids as the model trained on them, reference texts) with
``config.eval.num_beams`` beams (1: greedy) and at most ``config.eval.max_decode_len`` new
tokens (-1: data.target_len), and scores them against the references with sacrebleu's corpus
BLEU (its default 13a tokenization, the WMT convention). Sources are decoded in batches of
``BATCH`` rows padded to data.seq_len, so every evaluation reuses one compiled program.

Returns the metrics ({'eval_bleu': BLEU, 'eval_exact_match': share of outputs equal to their
reference}) and the first ``SAMPLES`` translations as {source: output}, what the training loop
writes to samples.jsonl and TensorBoard's text tab.
"""

from typing import Sequence

import jax
import numpy as np

from llm_jax.generation import api
from llm_jax.generation import text

BATCH = 16
SAMPLES = 4


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacrebleu's corpus BLEU (0-100) of ``hypotheses`` against one reference each."""
  import sacrebleu
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def translate(kind, params, tokenizer, sources: Sequence[Sequence[int]], *, width: int, max_new_tokens: int,
              num_beams: int = 1, length_penalty: float = 1.0) -> list[str]:
  """The decoded outputs (cut before eos) of source id lists, each at most ``width`` tokens, in batches
  of BATCH padded rows; beam search with ``early_stopping=True`` when ``num_beams`` > 1."""
  outputs = []
  for first in range(0, len(sources), BATCH):
    rows = list(sources[first:first + BATCH])
    count = len(rows)
    rows += [[tokenizer.eos_id]] * (BATCH - count)  # a whole batch: one compiled shape
    start = np.full((BATCH, 1), kind.decoder_start_id, np.int32)
    out = api.decode(kind, params, start, max_new_tokens=max_new_tokens, num_beams=num_beams,
                     length_penalty=length_penalty, early_stopping=num_beams > 1, eos_ids=(tokenizer.eos_id,),
                     pad_id=tokenizer.pad_id, inputs=text.source_batch(rows, tokenizer.pad_id, width))
    tokens, lengths = np.asarray(out.tokens)[:, 0], np.asarray(out.lengths)[:, 0]
    for i in range(count):
      ids = tokens[i, :lengths[i]].tolist()
      if ids and ids[-1] == tokenizer.eos_id:
        ids = ids[:-1]
      outputs.append(tokenizer.decode(ids))
  return outputs


def evaluate(trainer, params) -> tuple[dict, dict]:
  """(metrics, {source: translation}) of the run's decoded evaluation (module docstring)."""
  config = trainer.config
  e = config.eval
  examples = trainer.dataset.eval_examples(e.bleu_examples)
  if not examples:
    return {}, {}
  max_new = e.max_decode_len if e.max_decode_len != -1 else trainer.dataset.target_len
  hosted = jax.device_get(params)
  outputs = translate(trainer.kind, hosted, trainer.dataset.tokenizer, [x['source_ids'] for x in examples],
                      width=config.data.seq_len, max_new_tokens=max_new, num_beams=e.num_beams,
                      length_penalty=config.sample.length_penalty)
  references = [x['target'] for x in examples]
  metrics = {'eval_bleu': corpus_bleu(outputs, references),
             'eval_exact_match': float(np.mean([o.strip() == r.strip() for o, r in zip(outputs, references)]))}
  samples = {x['source']: o for x, o in zip(examples[:SAMPLES], outputs)}
  return metrics, samples
