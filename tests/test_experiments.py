"""experiments/bert_tiny_finetune runs end to end at a few steps and reports every number it claims."""

import json
import subprocess
import sys

import pytest

from tests.test_bench import ROOT


@pytest.mark.slow  # five training processes (pretrain, two fine-tunes, two from scratch), each compiling
def test_bert_tiny_finetune_experiment_reports_every_comparison(tmp_path):
  out = tmp_path / 'out'
  proc = subprocess.run([sys.executable, str(ROOT / 'experiments' / 'bert_tiny_finetune' / 'run.py'), f'--out={out}',
                         '--pretrain_steps=6', '--finetune_steps=4', '--finetune_lrs=1e-3,1e-4'],
                        capture_output=True, text=True, cwd=ROOT, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == json.loads((out / 'results.json').read_text())
  pre = result['pretrain']
  assert 0 < pre['masked_token_unigram_entropy'] < 10 and pre['nats_below_unigram'] == pytest.approx(
      pre['masked_token_unigram_entropy'] - pre['eval_loss'], abs=1e-3)
  assert set(result['finetune']) == set(result['scratch']) == {'1e-3', '1e-4'}
  for runs in (result['finetune'], result['scratch']):
    assert all(0 <= r['eval_accuracy'] <= 1 and 'eval_mcc' in r for r in runs.values())
  assert 0.4 < result['majority_class_accuracy'] < 0.6  # 'shuffled' is balanced in expectation
  assert (out / 'results.md').read_text().count('|') > 20
