"""The study runner end to end on a tiny study: real training processes, records, resume, claims,
two runners at once, shards, a failed variant, a bad key, SIGTERM, and the merged report.

Numbers in the report are checked against what the runs themselves wrote (metrics.jsonl) and
NumPy's mean and sample std, not against the runner's own arithmetic.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from llm_jax.experiments import report as report_lib
from llm_jax.experiments import runner
from llm_jax.experiments import study as study_lib
from tests.test_bench import ROOT

TINY = {'model.num_layers': 1, 'model.emb_dim': 32, 'model.num_heads': 2, 'data.seq_len': 32,
        'train.batch_size': 4, 'train.steps': 6, 'train.warmup_steps': 2, 'eval.every_steps': 3,
        'eval.max_batches': 2, 'log_every_steps': 3, 'checkpoint.every_steps': 3, 'sample.prompt': ''}


def write_study(folder, variants, seeds=(0, 1), overrides=None, claims='', name='tiny'):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'study.py').write_text(textwrap.dedent(f'''
      from llm_jax.experiments import Claim, Study

      def get_study(scale):
        return Study(name={name!r}, paper='A test study', config='configs/default.py',
                     overrides={dict(TINY, **(overrides or {}))!r}, variants={variants!r}, seeds={tuple(seeds)!r},
                     published={({'relu': '1.997'} if 'relu' in variants else {})!r}, claims=[{claims}])
      '''))
  return folder


def cli(*args, timeout=900, wait=True):
  cmd = [sys.executable, '-m', 'llm_jax.experiments', *map(str, args)]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


VARIANTS = {'relu': {'model.mlp_activation': 'relu'}, 'swiglu': {'model.mlp_activation': 'swiglu'},
            # passes every config check, fails when its data is read: recorded, the others still run
            'broken': {'data.dataset': 'files', 'data.files': '/nonexistent/*.txt'}}


@pytest.fixture(scope='module')
def ran(tmp_path_factory):
  """Two runner processes started together on the same study and root."""
  base = tmp_path_factory.mktemp('study')
  folder = write_study(base / 'tiny', VARIANTS, claims="Claim('swiglu', '<=', 'relu')")
  root, out = base / 'root', base / 'out'
  procs = [cli('run', folder, f'--workdir={root}', f'--out={out}', wait=False) for _ in range(2)]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  return folder, root, out, outputs


def _last_eval_loss(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [r['eval_loss'] for r in rows if 'eval_loss' in r][-1]


def test_every_run_ran_once_across_two_runners(ran):
  folder, root, _, outputs = ran
  starts = [line for text in outputs for line in text.splitlines() if ': starting' in line]
  ids = sorted(line.split()[3].rstrip(':') for line in starts)
  assert ids == sorted(f'{v}/seed_{s}' for v in VARIANTS for s in (0, 1))
  for v in VARIANTS:
    for s in (0, 1):
      log = (root / v / f'seed_{s}' / runner.LOG).read_text()
      assert log.count('\n=== ') == 1, log  # one training process per run
  assert any('ETA' in line for text in outputs for line in text.splitlines())
  assert all(f'/{len(VARIANTS) * 2} ' in line for line in starts)  # "run i/6 ..."


def test_results_csv_and_md_report_what_the_runs_wrote(ran):
  folder, root, out, _ = ran
  rows = list(csv.DictReader(open(out / 'results.csv')))
  assert [(r['variant'], r['seed']) for r in rows] == [(v, str(s)) for v in VARIANTS for s in (0, 1)]
  md = (out / 'results.md').read_text()
  for v in ('relu', 'swiglu'):
    values = [_last_eval_loss(root / v / f'seed_{s}') for s in (0, 1)]
    assert [float(r['eval_loss']) for r in rows if r['variant'] == v] == pytest.approx(values, abs=1e-6)
    assert all(r['status'] == 'ok' for r in rows if r['variant'] == v)
    assert f'{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}' in md
  broken = [r for r in rows if r['variant'] == 'broken']
  assert all(r['status'] == 'failed' and r['exit_code'] == '2' and '/nonexistent' in r['error'] for r in broken)
  assert 'broken seed 0: failed (exit 2)' in md
  relu = [float(r['eval_loss']) for r in rows if r['variant'] == 'relu']
  swiglu = [float(r['eval_loss']) for r in rows if r['variant'] == 'swiglu']
  verdict = 'yes' if np.mean(swiglu) <= np.mean(relu) else 'no'
  line = next(line for line in md.splitlines() if line.startswith('| swiglu |'))
  assert line.split('|')[-2].strip().startswith(verdict)
  assert '| relu | model.mlp_activation=relu |' in md and '| 1.997 |' in md
  curves = list(csv.DictReader(open(out / 'curves.csv')))
  for v in ('relu', 'swiglu'):
    for seed in (0, 1):
      rows_ = [json.loads(line) for line in open(root / v / f'seed_{seed}' / 'metrics.jsonl')]
      want = [(r['step'], r['eval_loss']) for r in rows_ if 'eval_loss' in r]
      got = [(int(c['step']), float(c['eval_loss'])) for c in curves if c['variant'] == v and c['seed'] == str(seed)]
      assert got == pytest.approx(want) and len(got) == 2
  assert not any(c['variant'] == 'broken' for c in curves)
  for name in ('curves.png', 'final.png'):
    data = (out / name).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000


def test_a_second_run_skips_finished_and_failed_runs(ran):
  folder, root, out, _ = ran
  stamp = {p: p.stat().st_mtime for p in root.glob('*/seed_*/metrics.jsonl')}
  proc = cli('run', folder, f'--workdir={root}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count(', skipped\n') == 6 and ': starting' not in proc.stdout
  assert stamp == {p: p.stat().st_mtime for p in root.glob('*/seed_*/metrics.jsonl')}


def test_report_merges_roots_written_by_different_machines(ran, tmp_path):
  folder, root, out, _ = ran
  other = tmp_path / 'other_root'
  other.mkdir()
  os.rename(root / 'swiglu', other / 'swiglu')  # as if a second machine had run those
  try:
    alone = cli('report', folder, f'--workdir={root}', f'--out={tmp_path / "a"}')
    assert alone.returncode == 0, alone.stderr
    assert 'swiglu seed 1: missing' in (tmp_path / 'a' / 'results.md').read_text()
    merged = cli('report', folder, f'--workdir={root},{other}', f'--out={tmp_path / "b"}')
    assert merged.returncode == 0, merged.stderr
    assert (tmp_path / 'b' / 'results.md').read_text() == (out / 'results.md').read_text()
  finally:
    os.rename(other / 'swiglu', root / 'swiglu')


def test_shards_split_the_runs_and_list_shows_commands(ran):
  folder, root, _, _ = ran
  runs = study_lib.load(str(folder), 'cpu').runs()
  parts = [runner.shard_runs(runs, (i, 3)) for i in (1, 2, 3)]
  assert sorted(r for p in parts for r in p) == sorted(runs) and all(len(p) == 2 for p in parts)
  proc = cli('list', folder, f'--workdir={root}', '--shard=2/3')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count('llm_jax.main') == 2 and '--config.model.mlp_activation=' in proc.stdout
  for bad in ('0/2', '3/2', 'x'):
    proc = cli('list', folder, f'--shard={bad}')
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and '--shard' in proc.stderr


def test_a_misspelt_key_fails_before_any_run(tmp_path):
  folder = write_study(tmp_path / 'bad', {'ok': {}, 'typo': {'model.mlp_activaton': 'relu'}})
  proc = cli('run', folder, f'--workdir={tmp_path / "root"}')
  assert proc.returncode == 2
  assert proc.stderr.strip() == ('llm_jax: study tiny, variant typo: config.model.mlp_activaton does not exist; '
                                 'did you mean config.model.mlp_activation?')
  assert not (tmp_path / 'root').exists()
  folder = write_study(tmp_path / 'bad_value', {'ok': {}, 'odd': {'model.mlp_activation': 'tanh'}})
  proc = cli('run', folder, f'--workdir={tmp_path / "root"}')
  assert proc.returncode == 2 and 'variant odd' in proc.stderr and "mlp_activation" in proc.stderr
  assert not (tmp_path / 'root').exists()


def test_bad_study_definitions_are_one_line_errors(tmp_path):
  with pytest.raises(study_lib.StudyError, match="claim names variant 'gelu'"):
    study_lib.load(str(write_study(tmp_path / 'a', {'relu': {}}, claims="Claim('gelu', '<', 'relu')")), 'cpu')
  with pytest.raises(study_lib.StudyError, match='--scale=tpu is not a scale'):
    study_lib.load(str(tmp_path / 'a'), 'tpu')
  with pytest.raises(study_lib.StudyError, match='has no study.py'):
    study_lib.load(str(tmp_path), 'cpu')
  with pytest.raises(study_lib.StudyError, match='must be letters'):
    study_lib.load(str(write_study(tmp_path / 'b', {'a b': {}})), 'cpu')


def test_sigterm_saves_the_run_and_the_next_invocation_resumes_it(tmp_path):
  folder = write_study(tmp_path / 'long', {'relu': {'model.mlp_activation': 'relu'}}, seeds=(0,),
                       overrides={'train.steps': 3000, 'log_every_steps': 1, 'eval.every_steps': 0,
                                  'checkpoint.every_steps': 1000})
  root = tmp_path / 'root'
  proc = cli('run', folder, f'--workdir={root}', wait=False)
  metrics = root / 'relu' / 'seed_0' / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('train_loss') >= 20):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  text = proc.communicate(timeout=300)[0]
  assert proc.returncode == 75, text
  assert 'stopped (exit 75)' in text and runner.read_record(str(root), study_lib.Run('relu', 0)) is None
  again = cli('run', folder, f'--workdir={root}')
  assert again.returncode == 0, again.stdout + again.stderr
  record = runner.read_record(str(root), study_lib.Run('relu', 0))
  assert record['status'] == 'ok' and record['curve'][-1][0] == 3000
  log = (root / 'relu' / 'seed_0' / runner.LOG).read_text()
  assert log.count('\n=== ') == 2 and 'resum' in log.split('\n=== ')[2].lower()


def test_judge_words_against_hand_computed_numbers():
  claim = study_lib.Claim('a', '<', 'b')
  summary = report_lib.summarize(
      study_lib.Study(name='s', paper='', config='', variants={'a': {}, 'b': {}}, seeds=(0, 1)),
      {study_lib.Run('a', 0): ({'status': 'ok', 'value': 1.0}, ''), study_lib.Run('a', 1): ({'status': 'ok', 'value': 1.2}, ''),
       study_lib.Run('b', 0): ({'status': 'ok', 'value': 1.5}, ''), study_lib.Run('b', 1): ({'status': 'ok', 'value': 1.7}, '')})
  ok, words = report_lib.judge(claim, summary)
  se = np.sqrt(2 * np.var([1.0, 1.2], ddof=1) / 2)
  assert ok and words == f'yes: 1.1000 vs 1.6000 (gap -0.5000, standard error {se:.4f})'
  ok, words = report_lib.judge(study_lib.Claim('b', '<', 'a'), summary)
  assert not ok and words.startswith('no:')
  summary['a']['values'], summary['a']['mean'], summary['a']['std'] = [1.55, 1.65], 1.6, float(np.std([1.55, 1.65], ddof=1))
  assert report_lib.judge(study_lib.Claim('b', '<', 'a'), summary)[1].startswith('no (within noise)')


def test_records_of_diverged_and_silent_runs(tmp_path):
  study = study_lib.Study(name='s', paper='', config='configs/default.py', variants={'a': {}}, seeds=(0,))
  run = study_lib.Run('a', 0)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 3, "eval_loss": 2.5}\n{"step": 6, "eval_loss": NaN}\n{"step"')
  nan = runner._record(study, run, str(tmp_path), 0, 1.0, '')  # pylint: disable=protected-access
  assert nan['status'] == 'failed' and nan['error'] == 'diverged: final eval_loss is nan'
  assert nan['curve'][0] == [3, 2.5] and len(nan['curve']) == 2  # the cut-off last line is skipped
  log = 'step 5\nllm_jax: the loss is NaN at step 6; lower the learning rate.\n'
  code3 = runner._record(study, run, str(tmp_path), 3, 1.0, log)  # pylint: disable=protected-access
  assert code3['status'] == 'failed' and code3['exit_code'] == 3
  assert code3['error'] == 'diverged: the loss is NaN at step 6; lower the learning rate.'
  crashed = runner._record(study, run, str(tmp_path), 1, 1.0, 'Traceback\n  ...\nValueError: boom\n')  # pylint: disable=protected-access
  assert crashed['error'] == 'ValueError: boom'
  (tmp_path / 'metrics.jsonl').write_text('{"step": 6, "train_loss": 2.0}\n')
  silent = runner._record(study, run, str(tmp_path), 0, 1.0, '')  # pylint: disable=protected-access
  assert silent['status'] == 'failed' and 'wrote no eval_loss' in silent['error']
