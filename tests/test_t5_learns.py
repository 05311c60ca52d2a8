"""configs/t5_tiny.py learns 'reverse_words': held-out phrases beam-decoded exactly (slow), and a
20-step run of it at tiny shapes writes the decoded evaluation's metrics and samples (fast)."""

import json
import os
import subprocess
import sys

import pytest

TINY = ['--config.train.steps=20', '--config.model.num_layers=1', '--config.model.num_decoder_layers=1',
        '--config.model.emb_dim=32', '--config.model.num_heads=2', '--config.model.mlp_dim=64',
        '--config.data.seq_len=48', '--config.data.target_len=48', '--config.train.batch_size=4',
        '--config.eval.every_steps=20', '--config.eval.max_batches=1', '--config.eval.bleu_examples=4',
        '--config.eval.max_decode_len=8', '--config.checkpoint.every_steps=20', '--config.sample.max_new_tokens=8']


def _train(workdir, *overrides, timeout: int):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  done = subprocess.run([sys.executable, '-m', 'llm_jax.main', '--config=configs/t5_tiny.py', f'--workdir={workdir}',
                         *overrides], capture_output=True, text=True, env=env, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _last_eval(lines):
  return next(line for line in reversed(lines) if 'eval_exact_match' in line)


def test_a_short_run_writes_bleu_exact_match_and_samples(tmp_path):
  workdir = tmp_path / 'run'
  lines = _train(workdir, *TINY, timeout=600)
  last = _last_eval(lines)
  assert last['step'] == 20
  assert 0.0 <= last['eval_bleu'] <= 100.0 and 0.0 <= last['eval_exact_match'] <= 1.0
  samples = [json.loads(line) for line in (workdir / 'samples.jsonl').read_text().splitlines()]
  assert samples and samples[-1]['step'] == 20
  decoded = samples[-1]['samples']
  assert 'the quick brown fox jumps' in decoded  # config.sample.eval_prompts
  assert len(decoded) > 2                        # and the first eval sources with their decodings


@pytest.mark.slow
def test_t5_tiny_reverses_held_out_phrases(tmp_path):
  """The whole config (3000 steps: about 7 minutes on 2 quiet cores, twice that when shared)."""
  last = _last_eval(_train(tmp_path / 'run', timeout=3600))
  assert last['step'] == 3000
  assert last['eval_exact_match'] > 0.95, last
