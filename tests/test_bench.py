"""The bench harness on tiny shapes: every figure present, the reference check passing and
refusing, decoding against recomputation, sweeps, FSDP memory scaling, the GPU script.

No test asserts a speed: timings on a shared CPU say nothing about correctness.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.bench import common as bench_common
from llm_jax.bench import decode as bench_decode
from llm_jax.bench import memory as bench_memory
from llm_jax.bench import sweep as bench_sweep
from llm_jax.bench import train as bench
from llm_jax import config as config_lib
from llm_jax.models import attention_kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {'model.num_layers': 2, 'model.emb_dim': 32, 'model.num_heads': 2, 'model.attention_block': 8,
        'data.seq_len': 16, 'train.batch_size': 4, 'train.warmup_steps': 1, 'sample.prompt': ''}
TINY_FLAGS = ';'.join(f'{k}={v}' for k, v in TINY.items() if k != 'sample.prompt')


def tiny(**extra):
  return config_lib.from_file(str(ROOT / 'configs' / 'default.py'), **{**TINY, **extra})


def test_training_reports_every_figure_and_passes_the_reference():
  # Scanned layers, remat and micro-batches all differ from the reference path.
  config = tiny(**{'model.scan_layers': True, 'model.remat': 'full', 'train.micro_batches': 2})
  result = bench.benchmark_training(config, steps=2, warmup=1, rounds=1)
  for key in ('step_ms', 'tokens_per_sec', 'flops_per_token', 'achieved_tflops', 'peak_tflops', 'peak_source',
              'mfu', 'compile_s', 'first_step_s', 'params', 'peak_memory_bytes', 'peak_memory_gib',
              'reference_loss', 'reference_delta', 'reference_max_rel_delta'):
    assert key in result, key
  assert result['peak_memory_bytes'] > 0
  assert result['reference_max_rel_delta'] <= bench.RTOL_FLOAT32
  assert len(result['reference_losses']) == bench.REFERENCE_STEPS + 1
  differs = ' '.join(result['reference_differs'])
  for key in ('model.scan_layers', 'model.remat', 'train.micro_batches', 'model.attention_kernel'):
    assert key in differs
  json.dumps(result)


@pytest.fixture
def leaky_kernel(monkeypatch):
  """Registers 'leaky': attention that forgets the mask (sees future tokens), a real bug."""
  monkeypatch.setattr(attention_kernels, '_KERNELS', dict(attention_kernels._KERNELS))
  xla = attention_kernels.get('xla')

  @attention_kernels.register('leaky', supports_dropout=True)
  def leaky(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=0):
    del mask
    return xla(q, k, v, mask=None, bias=bias, dropout=dropout, causal=causal, block=block)
  return 'leaky'


def test_reference_check_refuses_a_wrong_kernel(leaky_kernel):
  with pytest.raises(bench.ReferenceMismatch) as e:
    bench.check_reference(tiny(**{'model.attention_kernel': leaky_kernel}))
  message = str(e.value)
  assert '\n' not in message
  assert 'model.attention_kernel=leaky (reference xla)' in message and 'losses [' in message


def test_reference_check_refuses_bfloat16_at_float32_tolerance():
  with pytest.raises(bench.ReferenceMismatch, match='model.dtype=bfloat16 \\(reference float32\\)') as e:
    bench.check_reference(tiny(**{'model.dtype': 'bfloat16'}), rtol=bench.RTOL_FLOAT32 / 100)
  assert 0 < e.value.result['reference_max_rel_delta'] <= bench.RTOL_BF16  # bf16 rounding, within its tolerance


def test_reference_config_turns_every_fast_path_off():
  ref = bench.reference_config(tiny(**{'model.scan_layers': True, 'model.dtype': 'bfloat16',
                                       'model.dropout_rate': 0.1}))
  for key, value in bench.REFERENCE_SETTINGS.items():
    assert bench_common.flatten(ref)[key] == value
  assert ref.model.dropout_rate == 0.0
  if 'loss_chunk_size' in ref.train:
    assert ref.train.loss_chunk_size == 0


def test_decode_matches_recomputation_and_reports_figures():
  # prompt 4 + 14 new tokens > max_len 16: the bench raises max_len and says so.
  result = bench_decode.benchmark_decoding(tiny(), batch_sizes=(1, 3), new_tokens=14, prompt_len=4,
                                           no_cache_max_tokens=3, repeats=1)
  assert (result['max_len'], result['config_max_len']) == (18, 16)
  assert set(result['batches']) == {'1', '3'}
  for row in result['batches'].values():
    for key in ('prefill_ms', 'per_token_ms', 'tokens_per_sec', 'no_cache_per_token_ms', 'speedup_vs_no_cache'):
      assert row[key] is not None, key
    assert row['tokens_equal'] and row['tokens_compared'] == 3 * row['batch']
    assert row['no_cache_extrapolated'] and row['no_cache_timed_tokens'] == 3


@pytest.mark.parametrize('positions', ['t5_relative', 'learned'])
def test_encoder_decoder_decoding_matches_recomputation(positions):
  """The cross-attention cache (filled on the prefill) and the decoder's KV cache give the tokens of
  rerunning both stacks over the source and the decoded prefix, token after token."""
  from llm_jax.models.encoder_decoder import T5_LAYOUT
  layout = {f'model.{k}': v for k, v in T5_LAYOUT.items()}
  layout.update({'model.pos_encoding': positions, 'model.attention_scale': positions == 'learned',
                 'model.init_std': 0.5, 'data.target_len': 16})
  config = tiny(**layout)
  result = bench_decode.benchmark_decoding(config, batch_sizes=(3,), new_tokens=10, prompt_len=7,
                                           no_cache_max_tokens=10, repeats=1)
  row = result['batches']['3']
  assert result['kind'] == 'encoder_decoder' and row['tokens_equal'] and row['tokens_compared'] == 30


def test_sweep_entries_parse_from_lists_and_files(tmp_path):
  spec = 'configs/a.py,configs/b.py:mesh.rules.act_batch=data,fsdp;train.steps=3, configs/c.py'
  assert bench_sweep.parse_entries(spec) == [
      ('configs/a.py', {}), ('configs/b.py', {'mesh.rules.act_batch': 'data,fsdp', 'train.steps': '3'}),
      ('configs/c.py', {})]
  (tmp_path / 's.txt').write_text('# two runs\nconfigs/a.py:model.dtype=bfloat16\n\nconfigs/b.py\n')
  assert bench_sweep.parse_entries(str(tmp_path / 's.txt')) == [('configs/a.py', {'model.dtype': 'bfloat16'}),
                                                                 ('configs/b.py', {})]
  (tmp_path / 's.json').write_text(json.dumps(['configs/a.py', {'config': 'configs/b.py',
                                                                 'overrides': {'train.steps': 2}}]))
  assert bench_sweep.parse_entries(str(tmp_path / 's.json')) == [('configs/a.py', {}),
                                                                  ('configs/b.py', {'train.steps': 2})]


def test_sweep_writes_a_row_per_config_and_records_refusals(tmp_path):
  reference_like = TINY_FLAGS + ';model.attention_kernel=xla'   # identical to its reference: passes
  entries = bench_sweep.parse_entries(f'configs/default.py:{reference_like},'
                                      f'configs/default.py:{TINY_FLAGS};model.dtype=bfloat16')
  # A tolerance no bf16 run meets: the second entry is refused by the child bench process.
  summary = bench_sweep.run_sweep(entries, ['--steps=1', '--warmup=1', '--rounds=1', '--reference_rtol=1e-9'],
                                  str(tmp_path / 'sweep'), mode='train')
  rows = json.loads((tmp_path / 'sweep.json').read_text())
  assert summary['rows'] == len(rows) == 2 and summary['errors'] == 1
  assert rows[0]['result']['step_ms'] > 0 and rows[0]['result']['reference_max_rel_delta'] == 0
  assert rows[1]['error'].startswith(f'exit {bench.ReferenceMismatch.exit_code}: llm_jax: refusing to report')
  table = (tmp_path / 'sweep.md').read_text().strip().splitlines()
  assert len(table) == 2 + 2 and 'peak memory GiB' in table[0] and 'model.dtype=bfloat16' in table[3]


def test_memory_mode_compares_one_device_with_fsdp():
  result = bench_memory.benchmark_memory(tiny(**{'train.batch_size': 8}), devices=8)
  assert result['single']['devices'] == 1 and result['sharded']['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  assert 0 < result['ratio'] < 1
  assert result['state_ratio'] <= 1.2 / 8  # parameters and Adam moments split 8 ways
  assert isinstance(result['meets_target'], bool)


@pytest.mark.slow  # the device wrapper's test below runs the same script on one part
def test_gpu_script_runs_tiny_on_cpu(tmp_path):
  path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  env = dict(os.environ, PYTHONPATH=path)
  script = ROOT / 'experiments' / 'gpu_bench' / 'run.py'
  proc = subprocess.run([sys.executable, str(script), '--tiny', '--jobs=2', f'--out={tmp_path}'],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'gpu_bench.json').read_text())
  assert [p['part'] for p in results['parts']] == ['gpt2_small', 'bench_1b', 'shakespeare_char', 'decode']
  assert not [p['error'] for p in results['parts'] if 'error' in p]
  assert results['parts'][2]['result']['tensorflow_imported'] is False
  assert set(results['parts'][0]['result']['host_memory']) == {'glibc_tunables', 'keeps_freed_memory',
                                                              'cpu_computations_inline'}
  assert len((tmp_path / 'gpu_bench.md').read_text().strip().splitlines()) == 2 + 4



def test_gpu_device_wrapper_runs_tiny_and_returns_only_small_files(tmp_path):
  """experiments/gpu_bench/device.sh run: what the device tool's command runs on a GPU machine."""
  device_dir, out, work = tmp_path / 'device', tmp_path / 'out', tmp_path / 'work'
  (device_dir / 'data').mkdir(parents=True)
  (device_dir / 'data' / 'input.txt').write_text('ROMEO:\nBut soft, what light.\n\n' * 400)
  path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  env = dict(os.environ, PYTHONPATH=path, OUT=str(out), GPU_BENCH_WORK=str(work),
             GPU_BENCH_DEVICE_DIR=str(device_dir))
  script = ROOT / 'experiments' / 'gpu_bench' / 'device.sh'
  proc = subprocess.run(['bash', str(script), 'run', '--tiny', '--parts=shakespeare_char'],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert sorted(p.name for p in out.iterdir()) == ['device.txt', 'gpu_bench.json', 'gpu_bench.md', 'log.txt']
  assert 'jax ' + jax.__version__ in (out / 'device.txt').read_text()
  part, = json.loads((out / 'gpu_bench.json').read_text())['parts']
  assert 'error' not in part and part['result']['overrides']['data.files'] == str(device_dir / 'data' / 'input.txt')
  assert '[gpu_bench] shakespeare_char: done' in (out / 'log.txt').read_text()

  failed = subprocess.run(['bash', str(script), 'run', '--tiny', '--parts=nonesuch'],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert failed.returncode != 0 and 'unknown nonesuch' in (out / 'log.txt').read_text()
  for args, message in ((['prepare', str(tmp_path / 'missing.txt')], 'is not a non-empty file'),
                        (['launch'], 'usage:')):
    bad = subprocess.run(['bash', str(script), *args], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and message in bad.stderr


def _run_cpu_mfu_ab(script: str, tmp_path, *args):
  """Runs experiments/cpu_mfu_ab/SCRIPT with ARGS from tmp_path, as a user would."""
  path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  return subprocess.run([sys.executable, str(ROOT / 'experiments' / 'cpu_mfu_ab' / script), *args],
                        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=path),
                        timeout=600)


def _run_ab(tmp_path, *args):
  return _run_cpu_mfu_ab('run.py', tmp_path, *args)


def test_ab_script_times_variants_in_one_process(tmp_path):
  proc = _run_ab(tmp_path, '--tiny', '--rounds=2', '--steps=2', '--variant=base:',
                 '--variant=standin:model.attention_kernel=standin,model.attention_block=32',
                 f'--out={tmp_path / "ab.json"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / 'ab.json').read_text())
  assert [v['name'] for v in result['variants']] == ['base', 'standin']
  assert result['variants'][1]['overrides'] == {'model.attention_kernel': 'standin', 'model.attention_block': 32}
  assert all(v['step_ms'] > 0 and 0 < v['mfu'] and 0 < v['cores'] for v in result['variants'])
  assert 'standin' in proc.stdout and 'MFU' in proc.stdout and 'cores' in proc.stdout


def _run_attention_timer(tmp_path, *args):
  return _run_cpu_mfu_ab('attention.py', tmp_path, *args)


@pytest.mark.slow  # the kernels it times are checked in-process below
def test_attention_timer_times_kernels_alone_and_checks_their_values(tmp_path):
  out = tmp_path / 'attention.json'
  proc = _run_attention_timer(tmp_path, '--tiny', '--rounds=1', '--iters=1', '--kernel=blocked',
                              '--kernel=chunks2', '--kernel=products', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r['kernel']: r for r in json.loads(out.read_text())['kernels']}
  assert list(rows) == ['blocked', 'chunks2', 'products']
  assert all(r['forward_ms'] > 0 and r['train_ms'] > 0 and r['train_cores'] > 0 for r in rows.values())
  # kernels that compute attention are compared with 'xla'; the timing stand-ins are not
  assert rows['blocked']['max_relative_error'] < 1e-5 and rows['chunks2']['max_relative_error'] < 1e-5
  assert rows['products']['max_relative_error'] is None
  bad = _run_attention_timer(tmp_path, '--tiny', '--kernel=nonesuch')
  assert bad.returncode != 0 and "--kernel='nonesuch' is unknown" in bad.stderr


@pytest.fixture
def timing_kernels(monkeypatch):
  """experiments/cpu_mfu_ab/kernels.py, registered for this test only."""
  import importlib
  monkeypatch.setattr(attention_kernels, '_KERNELS', dict(attention_kernels._KERNELS))
  monkeypatch.syspath_prepend(str(ROOT / 'experiments' / 'cpu_mfu_ab'))
  import kernels
  return importlib.reload(kernels)


def test_timing_kernels_chunks_equal_blocked_and_stand_ins_keep_shapes(timing_kernels):
  from llm_jax.models import layers
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((4, 32, 2, 8)), jnp.float32) for _ in range(3))
  seg = jnp.asarray(np.repeat([[1] * 20 + [2] * 12], 4, axis=0))
  pos = jnp.asarray(np.repeat([list(range(20)) + list(range(12))], 4, axis=0))
  mask = layers.attention_mask(seg, seg, pos, pos, causal=True)
  want = attention_kernels.xla_attention(q, k, v, mask=mask)
  for name in ('chunks2', 'chunks4'):
    got = attention_kernels.get(name)(q, k, v, mask=mask, causal=True, block=8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for name in timing_kernels.WRONG_VALUES:
    assert attention_kernels.get(name)(q, k, v, mask=mask, causal=True, block=8).shape == q.shape
  with pytest.raises(ValueError, match='chunks8 needs a batch divisible by 8'):
    attention_kernels.get('chunks8')(q, k, v, mask=mask, causal=True, block=8)


def test_compile_step_applies_compiler_options_to_that_compilation_alone(tmp_path):
  from llm_jax.train import loop
  config = tiny(**{'model.dropout_rate': 0.0})
  dataset = bench_common.synthetic_dataset(config)
  trainer = loop.build_trainer(config, str(tmp_path), dataset=dataset)
  with trainer.context():
    state = trainer.init()
    batch = trainer.device_batch(dataset.train_batch(0))
    plain, _, _ = bench_common.compile_step(trainer, state, batch)
    flat, _, _ = bench_common.compile_step(trainer, state, batch, {'xla_disable_hlo_passes': 'tree_reduction_rewriter'})
  # XLA:CPU rewrites the norms' reductions into reduce-windows unless that pass is off
  assert 'reduce-window' in plain.as_text() and 'reduce-window' not in flat.as_text()


@pytest.mark.slow  # test_compile_step_applies_compiler_options... checks the mechanism in-process
def test_ab_script_takes_xla_options_per_variant(tmp_path):
  proc = _run_ab(tmp_path, '--tiny', '--rounds=1', '--steps=1', '--variant=base:',
                 '--variant=flat:xla_disable_hlo_passes=tree_reduction_rewriter', f'--out={tmp_path / "ab.json"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads((tmp_path / 'ab.json').read_text())['variants']
  assert rows[1]['overrides'] == {'xla_disable_hlo_passes': 'tree_reduction_rewriter'}
  proc = _run_ab(tmp_path, '--tiny', '--variant=a:xla_cpu_experimental_ynn_fusion_type=reduce')
  assert proc.returncode != 0 and "--variant a: XLA rejects" in proc.stderr and 'not a valid enum' in proc.stderr

def test_ab_script_names_a_malformed_variant(tmp_path):
  proc = _run_ab(tmp_path, '--tiny', '--variant=base')
  assert proc.returncode != 0 and 'expected NAME:key=value' in proc.stderr
  proc = _run_ab(tmp_path, '--tiny', '--variant=a:model.num_layers')
  assert proc.returncode != 0 and "'model.num_layers' is not key=value" in proc.stderr
  proc = _run_ab(tmp_path, '--tiny', '--variant=a:model.num_layer=2')
  assert proc.returncode != 0 and 'did you mean config.model.num_layers?' in proc.stderr



def test_cpu_seconds_counts_this_process_busy_time():
  from llm_jax import perf
  # Busy in Python until the kernel's own count (os.times, read independently) shows 0.3 s of
  # CPU: on a loaded machine that takes longer than 0.3 s of wall time, so count CPU, not wall.
  start_cpu, start_ref = perf.cpu_seconds(), sum(os.times()[:2])
  time.sleep(0.2)  # wall time that is not CPU time
  while sum(os.times()[:2]) - start_ref < 0.3:
    pass
  busy, reference = perf.cpu_seconds() - start_cpu, sum(os.times()[:2]) - start_ref
  assert 0.3 <= reference and abs(busy - reference) < 0.05, (busy, reference)


@pytest.mark.slow  # imports torch and compiles both sides; the figure itself is in BENCHMARKS.md
def test_bert_vs_hf_script_times_both_sides_at_equal_parameter_counts(tmp_path):
  out = tmp_path / 'bert.json'
  proc = subprocess.run([sys.executable, str(ROOT / 'experiments' / 'bert_vs_hf' / 'run.py'), '--layers=1',
                         '--width=32', '--heads=2', '--seq_len=16', '--batch=2', '--vocab=300', '--steps=1',
                         '--rounds=1', '--warmup=1', f'--out={out}'], capture_output=True, text=True, cwd=ROOT,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result['llm_jax']['params'] == result['transformers']['params']
  assert result['llm_jax']['step_ms'] > 0 and result['transformers']['step_ms'] > 0 and result['speedup'] > 0
