"""The encoder-decoder kind through train_and_evaluate: resume is bitwise (RELIABILITY rows 2 and 3) across an
epoch boundary of the packed rows, and the decoded evaluation (BLEU, exact match, samples.jsonl) is written at
every evaluation and rewritten identically after a resume from an earlier step."""

import hashlib
import json
import math
import pathlib

import jax
import numpy as np
import pytest

from llm_jax import checkpoint as ckpt_lib
from llm_jax.data import seq2seq
from llm_jax.models.encoder_decoder import T5_LAYOUT
from llm_jax.train import loop
from llm_jax.train import translation
from tests.train.test_loop import final_params, losses, tiny_config

WORDS = 'the quick brown fox jumps over a lazy dog and then runs far away home'.split()
# (a few words, the same words reversed): several pairs fit a packed row of 32 characters a side.
PAIRS = [(' '.join(WORDS[i % 13:i % 13 + 2 + i % 3]), ' '.join(WORDS[i % 13:i % 13 + 2 + i % 3][::-1]))
         for i in range(60)]
EVAL_FRACTION = 0.1
HELD_OUT = PAIRS[-math.ceil(EVAL_FRACTION * len(PAIRS)):]  # the 'pairs' dataset's eval split: the last pairs
STEPS, STOP = 12, 6
PROMPT = 'far away the dog'  # a config.sample.eval_prompts source, decoded beside the BLEU examples


def config(tmp: pathlib.Path, **overrides):
  """A 2+2-layer T5 on PAIRS, dropout on (its keys must resume too), evaluated with BLEU every 3 steps."""
  pairs = tmp / 'pairs.tsv'
  if not pairs.exists():
    pairs.write_text(''.join(f'{s}\t{t}\n' for s, t in PAIRS))
  return tiny_config(tmp, **{f'model.{k}': v for k, v in T5_LAYOUT.items()}, **{
      'model.num_decoder_layers': 2, 'model.init_std': 0.2,
      'data.dataset': 'pairs', 'data.files': str(pairs), 'data.eval_fraction': EVAL_FRACTION,
      'data.cache_dir': str(tmp / 'cache_seq2seq'),
      'train.steps': STEPS, 'eval.every_steps': 3, 'checkpoint.every_steps': 3,
      'eval.bleu_examples': 6, 'eval.num_beams': 2, 'eval.max_decode_len': 10,
      'sample.eval_prompts': PROMPT, 'sample.max_new_tokens': 10, **overrides})


def record_batches(fn) -> tuple[dict, set]:
  """({step: hash of its batch}, {(rows_per_epoch, the most examples in a row)}) of the packed seq2seq
  batches ``fn`` trains on."""
  seen, rows = {}, set()
  original = seq2seq.Seq2SeqDataset.train_batch

  def recording(self, step):
    batch = original(self, step)
    seen[step] = hashlib.sha256(b''.join(np.ascontiguousarray(batch[k]).tobytes() for k in sorted(batch))).hexdigest()
    rows.add((self.rows_per_epoch, int(batch['decoder_segment_ids'].max())))
    return batch

  seq2seq.Seq2SeqDataset.train_batch = recording
  try:
    fn()
  finally:
    seq2seq.Seq2SeqDataset.train_batch = original
  return seen, rows


TIMING = ('tokens_per_sec', 'mfu')  # measured, so never the same twice


def metrics_rows(workdir) -> list[dict]:
  """metrics.jsonl's rows without the timing fields."""
  rows = [json.loads(line) for line in open(pathlib.Path(workdir) / 'metrics.jsonl')]
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def samples_lines(workdir) -> list[dict]:
  return [json.loads(line) for line in open(pathlib.Path(workdir) / 'samples.jsonl')]


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """(tmp, workdir, {step: batch hash}, rows per epoch) of one uninterrupted STEPS-step run (the last test
  resumes it from step 9 to STEPS again, which must leave it as it was)."""
  tmp = tmp_path_factory.mktemp('seq2seq_straight')
  seen, rows = record_batches(lambda: loop.train_and_evaluate(config(tmp), str(tmp / 'run')))
  rows_per_epoch, = {r for r, _ in rows}
  assert max(k for _, k in rows) >= 2  # rows hold several examples
  return tmp, tmp / 'run', seen, rows_per_epoch


def test_resume_is_bitwise_exact_across_an_epoch_boundary(tmp_path, straight):
  """stop_at=STOP, then resume to STEPS: the same batches (none repeated or skipped), per-step losses,
  evaluations (loss, BLEU, exact match), samples.jsonl and final parameters as the run that never stopped."""
  _, straight_dir, straight_seen, rows_per_epoch = straight
  batch = config(tmp_path).train.batch_size
  # the resumed half starts mid-epoch and crosses at least one epoch boundary of the packed rows
  assert (STOP * batch) % rows_per_epoch and (STOP * batch) // rows_per_epoch < (STEPS * batch - 1) // rows_per_epoch
  workdir = str(tmp_path / 'run')
  first, _ = record_batches(lambda: loop.train_and_evaluate(config(tmp_path, **{'train.stop_at': STOP}), workdir))
  second, _ = record_batches(lambda: loop.train_and_evaluate(config(tmp_path), workdir))
  assert sorted(first) == list(range(STOP)) and sorted(second) == list(range(STOP, STEPS))
  assert {**first, **second} == straight_seen
  assert losses(workdir) == losses(straight_dir) and sorted(losses(workdir)) == list(range(1, STEPS + 1))
  assert metrics_rows(workdir) == metrics_rows(straight_dir)  # train and eval metrics, BLEU included
  assert samples_lines(workdir) == samples_lines(straight_dir)
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(straight_dir))


def test_bleu_exact_match_and_samples_at_every_evaluation_and_after_a_resume(straight):
  """eval.bleu_examples > 0: every evaluation logs eval_bleu and eval_exact_match and writes a samples.jsonl
  line holding the eval prompt's translation and the first BLEU examples' (translation.SAMPLES of them);
  the last line and the scores are what decoding the final parameters again gives. On resume from step 9
  (step 12's checkpoint set aside) step 12's line is dropped and written again, the same."""
  tmp, workdir, _, _ = straight
  rows = [r for r in metrics_rows(workdir) if 'eval_loss' in r]
  assert [r['step'] for r in rows] == [3, 6, 9, 12]
  for r in rows:
    assert 0 <= r['eval_bleu'] <= 100 and 0 <= r['eval_exact_match'] <= 1
  lines = samples_lines(workdir)
  assert [line['step'] for line in lines] == [3, 6, 9, 12]
  sources = [s for s, _ in HELD_OUT[:translation.SAMPLES]]
  assert all(list(line['samples']) == [PROMPT] + sources for line in lines)

  cfg, kind, params, tokenizer = ckpt_lib.load_for_inference(str(workdir))
  ids = [list(tokenizer.encode(s)) + [tokenizer.eos_id] for s, _ in HELD_OUT]
  outputs = translation.translate(kind, params, tokenizer, ids, width=cfg.data.seq_len, max_new_tokens=10,
                                  num_beams=2, length_penalty=cfg.sample.length_penalty)
  assert [lines[-1]['samples'][s] for s in sources] == outputs[:translation.SAMPLES]
  references = [t for _, t in HELD_OUT]
  assert rows[-1]['eval_bleu'] == pytest.approx(translation.corpus_bleu(outputs, references), abs=1e-6)
  exact = np.mean([o.strip() == r for o, r in zip(outputs, references)])
  assert rows[-1]['eval_exact_match'] == pytest.approx(exact)

  ckpt_lib.Checkpoints(str(workdir), cfg.checkpoint).set_aside(STEPS)
  before = metrics_rows(workdir)
  loop.train_and_evaluate(config(tmp), str(workdir))
  assert samples_lines(workdir) == lines
  assert metrics_rows(workdir) == before
