"""experiments/t5_vs_hf/run.py at tiny shapes: both sides timed, every figure it reports present.

No test asserts a speed: timings on a shared CPU say nothing about correctness.
"""

import json
import subprocess
import sys

import pytest

from tests.test_bench import ROOT

TINY = ['--d_model=32', '--d_kv=8', '--d_ff=64', '--layers=1', '--heads=4', '--vocab=120', '--buckets=8',
        '--max_distance=20', '--source_len=12', '--target_len=8', '--batch=2', '--steps=1', '--warmup=0',
        '--rounds=1', '--prompt_len=6', '--max_length=8', '--num_beams=3']


@pytest.mark.slow  # imports torch and compiles three llm_jax programs (train step, beam, greedy): 20-45 s on 2 cores
def test_t5_vs_hf_script_reports_every_part(tmp_path):
  out = tmp_path / 'results.json'
  proc = subprocess.run([sys.executable, str(ROOT / 'experiments' / 't5_vs_hf' / 'run.py'), *TINY, f'--out={out}'],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == json.loads(out.read_text())
  train = result['train']
  assert train['llm_jax']['params'] == train['transformers']['params']
  assert train['tokens_per_step'] == {'source_plus_target': 2 * (12 + 8), 'target': 2 * 8}
  for side in ('llm_jax', 'transformers'):
    assert train[side]['tokens_per_s'] > 0 and len(train[side]['step_ms_each_round']) == 1
  for name in ('beam', 'greedy'):
    row = result[name]
    assert row['same_tokens'] and row['new_tokens'] == 7  # no eos: max_length - 1 new tokens
    assert row['llm_jax']['median_s'] > 0 and row['transformers']['median_s'] > 0 and row['speedup'] > 0
  assert '| train step' in proc.stdout and '| beam' in proc.stdout


def test_t5_vs_hf_script_refuses_an_unknown_part():
  proc = subprocess.run([sys.executable, str(ROOT / 'experiments' / 't5_vs_hf' / 'run.py'), '--parts=train,sampling',
                         '--out='], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode != 0 and 'sampling' in proc.stderr
