"""A trained encoder-decoder run through the command line: export to Hugging Face and back, sample,
init_from a T5 directory, a T5 directory given to a decoder config; and a T5 tokenizer directory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from llm_jax import errors
from llm_jax import pretrained

TINY = ['--config=configs/t5_tiny.py', '--config.train.steps=3', '--config.model.num_layers=1',
        '--config.model.num_decoder_layers=2', '--config.model.emb_dim=32', '--config.model.num_heads=2',
        '--config.model.mlp_dim=64', '--config.data.seq_len=24', '--config.data.target_len=24',
        '--config.model.vocab_size=128', '--config.train.batch_size=4', '--config.eval.every_steps=3',
        '--config.eval.max_batches=1', '--config.eval.bleu_examples=4', '--config.eval.max_decode_len=6',
        '--config.checkpoint.every_steps=3', '--config.sample.eval_prompts=']
# model.vocab_size=128: the table has more rows than the character tokenizer has ids, as t5-base's
# 32128 rows for its tokenizer's 32100: export, sampling and init_from keep the padded table.


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  return subprocess.run([sys.executable, '-m', f'llm_jax.{module}', *map(str, args)], capture_output=True, text=True,
                        env=env, timeout=600)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('t5run') / 'run'
  done = _run('main', *TINY, f'--workdir={workdir}')
  assert done.returncode == 0, done.stderr[-3000:]
  lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert 'eval_bleu' in lines[-1] and 'eval_exact_match' in lines[-1]
  out = workdir.parent / 'hf'
  done = _run('convert', f'--workdir={workdir}', f'--out={out}')
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'T5ForConditionalGeneration' in done.stdout
  return workdir, out


def test_export_loads_in_transformers_with_the_run_s_logits(run):
  workdir, out = run
  model = pretrained.from_pretrained(str(workdir))
  reference = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
  rng = np.random.default_rng(0)
  vocab = model.kind.cfg.vocab_size
  src, tgt = rng.integers(3, vocab, (2, 9)), rng.integers(3, vocab, (2, 5))
  smask, tmask = np.ones_like(src), np.ones_like(tgt)
  smask[1, 4:], tmask[1, 3:] = 0, 0
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(src), attention_mask=torch.tensor(smask),
                     decoder_input_ids=torch.tensor(tgt), decoder_attention_mask=torch.tensor(tmask)).logits.numpy()
  pos = lambda a: np.broadcast_to(np.arange(a.shape[1]), a.shape)
  got = np.asarray(model.kind.module.apply({'params': model.params}, src, pos(src), smask, tgt, pos(tgt), tmask))
  assert np.abs(got - want)[tmask.astype(bool)].max() < 1e-4


def test_sample_translates_with_beams(run):
  workdir, _ = run
  done = _run('sample', f'--workdir={workdir}', '--prompt=one two three', '--num_beams=2', '--max_length=6')
  assert done.returncode == 0, done.stderr[-2000:]
  assert '--- sample 1/1 (score' in done.stdout


def test_init_from_the_exported_t5_restores_everything(run, tmp_path):
  workdir, out = run
  done = _run('main', *TINY, f'--workdir={tmp_path / "again"}', f'--config.init_from={out}',
              f'--config.data.cache_dir={workdir / "data"}', '--config.train.steps=1', '--config.eval.bleu_examples=0')
  assert done.returncode == 0, done.stderr[-3000:]
  line = next(l for l in done.stdout.splitlines() if l.startswith(f'[llm_jax] init_from {out}:'))
  assert line.endswith('parameters restored'), line  # nothing fresh, nothing left out
  restored = int(line.split(': ')[1].split()[0])
  # 1 + 2 layers: the shared embedding, per stack its relative bias table and final norm, and per layer
  # 4 attention projections + norm, 4 more in each decoder cross-attention, wi, wo and their norm.
  assert restored == 1 + 2 * 2 + 1 * (5 + 3) + 2 * (5 + 5 + 3)


def test_init_from_a_table_larger_than_the_tokenizer_names_model_vocab_size(run, tmp_path):
  workdir, out = run
  assert json.loads((out / 'config.json').read_text())['vocab_size'] == 128
  done = _run('main', *TINY, f'--workdir={tmp_path / "again"}', f'--config.init_from={out}',
              f'--config.data.cache_dir={workdir / "data"}', '--config.model.vocab_size=-1', '--config.train.steps=1')
  assert done.returncode == errors.USAGE, done.stderr[-2000:]
  assert '(the checkpoint has 128)' in done.stderr and '--config.model.vocab_size=128' in done.stderr
  from llm_jax import checkpoint
  assert checkpoint.finalized_steps(str(tmp_path / 'again')) == []


def test_a_t5_directory_for_a_decoder_config_names_both(run, tmp_path):
  _, out = run
  done = _run('main', '--config=configs/default.py', f'--workdir={tmp_path / "d"}', f'--config.init_from={out}',
              '--config.train.steps=1')
  assert done.returncode == errors.USAGE, done.stderr[-2000:]
  assert "T5ForConditionalGeneration (model.kind 'encoder_decoder')" in done.stderr
  assert "model.kind='decoder'" in done.stderr


def test_a_t5_tokenizer_directory_gives_transformers_ids(tmp_path):
  """config.data.tokenizer=pretrained on a directory holding a T5 tokenizer.json (SentencePiece unigram,
  Metaspace): the same ids as transformers' tokenizer, eos </s> and pad <pad>."""
  import sentencepiece as spm
  from llm_jax.data import tokenizers
  text = tmp_path / 'corpus.txt'
  text.write_text('\n'.join(f'the {w} sat on the mat and the {w} ran far away' for w in
                            'cat dog cow bird fish horse mouse sheep goat duck'.split() * 20))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / 'sp'), vocab_size=30,
                                 model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  hf = transformers.T5TokenizerFast(vocab_file=str(tmp_path / 'sp.model'), extra_ids=0)
  hf.save_pretrained(str(tmp_path / 'model'))
  ours = tokenizers.tokenizer_class('pretrained').train((), tokenizer_path=str(tmp_path / 'model'))
  for sentence in ('the cat sat on the mat', 'a horse ran far away', 'the goat and the duck'):
    assert ours.encode(sentence).tolist() + [ours.eos_id] == hf(sentence).input_ids
  assert (ours.pad_id, ours.eos_id) == (hf.pad_token_id, hf.eos_token_id) == (0, 1)
