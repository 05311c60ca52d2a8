"""The GPU table in one command: training MFU at two sizes, Tiny Shakespeare to 1.47, decoding.

  python experiments/gpu_bench/run.py --out=DIR --manual_dir=DIR_WITH_input.txt
  python experiments/gpu_bench/run.py --out=/tmp/gpu_tiny --tiny   # CPU smoke test: tiny shapes, float32

Parts (``--parts``, all by default), each in a fresh process so one that fails (out of
memory, a kernel that does not exist here) is a row with its error and the rest run:

* ``gpt2_small``: configs/gpt2_small.py (124M at the 50304-token padded GPT-2 vocabulary),
  bf16, context 1024, cuDNN flash attention, 64 rows in 2 micro-batches; MFU against
  the 989 TFLOP/s bf16 datasheet peak (target >= 0.55) and tokens/s.
* ``bench_1b``: configs/bench_1b.py (1.28B, context 2048, cuDNN attention); MFU.
* ``shakespeare_char``: trains configs/shakespeare_char.py (nanoGPT's baby GPT, 5000
  steps, bf16, cuDNN attention) to validation loss <= 1.47 (nanoGPT: 1.4697); wall time
  from the start of training (data tokenized, step compiled, evaluation every 250 steps
  included; target < 90 s). Data: ``--manual_dir``/input.txt through
  ``dataset='files'``: the first 90% of its characters train, the last 10% validate
  (nanoGPT's split); no TensorFlow or TFDS is imported (the result records it).
* ``decode``: GPT-2 124M shapes, random weights, greedy, 16-token prompt + 256 new
  tokens at batch 1 and 64: tokens/s with the KV cache and the speedup over full
  recomputation (its cost extrapolated from 32 timed tokens).

The bench parts run ``python -m llm_jax.bench`` with its reference-numerics check, so a
configuration whose losses drift from the float32 reference is refused, not reported.
Writes DIR/gpu_bench.json (every part's full result) and DIR/gpu_bench.md.
"""

import time

_START = time.time()

import concurrent.futures  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

SCRIPT = pathlib.Path(__file__).resolve()
ROOT = SCRIPT.parents[2]
sys.path.insert(0, str(ROOT))
PARTS = ('gpt2_small', 'bench_1b', 'shakespeare_char', 'decode')
TARGET_LOSS = 1.47
flags.DEFINE_string('out', None, 'Directory for gpu_bench.json and gpu_bench.md.')
flags.DEFINE_string('manual_dir', '', 'Directory holding Tiny Shakespeare\'s input.txt (part shakespeare_char).')
flags.DEFINE_bool('tiny', False, 'Tiny shapes, few steps, float32, no cuDNN: a smoke test that runs on a CPU.')
flags.DEFINE_list('parts', list(PARTS), 'Parts to run.')
flags.DEFINE_integer('timeout_s', 3600, 'Seconds after which a part is stopped and recorded as failed.')
flags.DEFINE_integer('jobs', 1, 'Parts run at the same time. Keep 1 for figures (parts would share the '
                     'device); the CPU smoke test uses 2 to finish sooner.')
flags.DEFINE_string('child', '', 'Internal: run this part in this process and print its JSON.')
FLAGS = flags.FLAGS

GPU = dict(
    gpt2_small=dict(config='configs/gpt2_small.py', overrides={
        'model.dtype': 'bfloat16', 'model.attention_kernel': 'cudnn', 'model.scan_layers': False,
        'data.seq_len': 1024, 'train.batch_size': 64, 'train.micro_batches': 2},
        flags=['--mode=train', '--vocab_size=50304', '--steps=20', '--warmup=3', '--rounds=3']),
    bench_1b=dict(config='configs/bench_1b.py', overrides={'model.attention_kernel': 'cudnn'},
                  flags=['--mode=train', '--steps=10', '--warmup=2', '--rounds=3']),
    decode=dict(config='configs/gpt2_small.py', overrides={'model.dtype': 'bfloat16', 'data.seq_len': 1024},
                flags=['--mode=decode', '--vocab_size=50304', '--decode_batch_sizes=1,64',
                       '--decode_new_tokens=256', '--decode_prompt_len=16', '--decode_no_cache_max_tokens=32']),
    shakespeare_char=dict(config='configs/shakespeare_char.py', overrides={
        'model.dtype': 'bfloat16', 'model.attention_kernel': 'cudnn', 'log_every_steps': 100,
        'checkpoint.every_steps': 5000}),
)
_TINY_MODEL = {'model.num_layers': 1, 'model.emb_dim': 32, 'model.num_heads': 2, 'model.mlp_dim': 128,
               'model.dtype': 'float32',
               'model.attention_kernel': 'blocked', 'model.attention_block': 16, 'data.seq_len': 32,
               'model.dropout_rate': 0.0}
TINY = dict(
    gpt2_small=dict(config='configs/gpt2_small.py', overrides=dict(
        _TINY_MODEL, **{'train.batch_size': 4, 'train.micro_batches': 2, 'model.scan_layers': False}),
        flags=['--mode=train', '--vocab_size=512', '--steps=2', '--warmup=1', '--rounds=1']),
    bench_1b=dict(config='configs/bench_1b.py', overrides=dict(_TINY_MODEL, **{'train.batch_size': 4}),
                  flags=['--mode=train', '--vocab_size=512', '--steps=2', '--warmup=1', '--rounds=1']),
    decode=dict(config='configs/gpt2_small.py', overrides=_TINY_MODEL,
                flags=['--mode=decode', '--vocab_size=512', '--decode_batch_sizes=1,4', '--decode_new_tokens=8',
                       '--decode_prompt_len=4', '--decode_no_cache_max_tokens=4']),
    shakespeare_char=dict(config='configs/shakespeare_char.py', overrides=dict(
        _TINY_MODEL, **{'train.batch_size': 8, 'train.steps': 20, 'train.warmup_steps': 2, 'eval.every_steps': 10,
                        'eval.max_batches': 2, 'log_every_steps': 10, 'checkpoint.every_steps': 20})),
)


def _tiny_corpus(out: pathlib.Path) -> str:
  """A small generated text standing in for Tiny Shakespeare in --tiny runs."""
  directory = out / 'tiny_corpus'
  directory.mkdir(parents=True, exist_ok=True)
  lines = [f'{who}:\nThe {what} of {where} is {how}, my lord.\n\n'
           for who in ('ROMEO', 'JULIET', 'HAMLET') for what in ('crown', 'sword', 'rose', 'night')
           for where in ('Verona', 'Denmark', 'Rome') for how in ('fair', 'lost', 'sweet')]
  (directory / 'input.txt').write_text(''.join(lines))
  return str(directory)


def train_shakespeare(spec: dict, manual_dir: str, out: pathlib.Path) -> dict:
  """Trains the part's config on manual_dir/input.txt (last 10% of characters validate)."""
  import tempfile
  from llm_jax import config as config_lib
  from llm_jax.train import loop
  path = os.path.join(manual_dir, 'input.txt')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist; pass --manual_dir=DIR with Tiny Shakespeare\'s input.txt.')
  overrides = dict(spec['overrides'], **{
      'data.dataset': 'files', 'data.files': path, 'data.eval_fraction': 0.1, 'data.eval_split': 'validation',
      'data.cache_dir': str(out / 'shakespeare_data'), 'sample.prompt': ''})
  config = config_lib.from_file(str(ROOT / spec['config']), **overrides)
  with tempfile.TemporaryDirectory(dir=out) as workdir:
    start = time.time()
    summary = loop.train_and_evaluate(config, workdir)
    wall = time.time() - start
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      evals = [(r['step'], r['eval_loss']) for r in map(json.loads, f) if 'eval_loss' in r]
  import jax
  reached = [step for step, loss in evals if loss <= TARGET_LOSS]
  return dict(device=jax.devices()[0].device_kind, steps=summary['step'], eval_loss=summary.get('eval_loss'),
              train_loss=summary.get('train_loss'), wall_s=round(wall, 1),
              process_wall_s=round(time.time() - _START, 1), first_step_at_target=reached[0] if reached else None,
              eval_curve=evals, data_split='files: first 90% of input.txt characters train, last 10% validate',
              tensorflow_imported='tensorflow' in sys.modules, overrides=overrides)


def run_part(name: str, spec: dict, out: pathlib.Path) -> dict:
  """One part in a fresh process: a row {'part', 'config', 'overrides', 'result' | 'error'}."""
  from llm_jax.bench import sweep as bench_sweep
  if name != 'shakespeare_char':
    row = bench_sweep.run_entry(spec['config'], spec['overrides'], spec['flags'], timeout=FLAGS.timeout_s)
    return dict(part=name, **row)
  manual_dir = FLAGS.manual_dir or (_tiny_corpus(out) if FLAGS.tiny else '')
  command = [sys.executable, str(SCRIPT), f'--child={name}', f'--out={out}', f'--manual_dir={manual_dir}',
             f'--tiny={FLAGS.tiny}']
  row = dict(part=name, config=spec['config'], overrides=';'.join(f'{k}={v}' for k, v in spec['overrides'].items()))
  try:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=FLAGS.timeout_s, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return dict(row, error=f'timed out after {FLAGS.timeout_s} s')
  result = bench_sweep.last_json(proc.stdout) if proc.returncode == 0 else None
  if result is None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()] or ['no output']
    return dict(row, error=f'exit {proc.returncode}: {lines[-1][:2000]}')
  return dict(row, result=result)


def headline(part: str, result: dict) -> tuple[str, str, object]:
  """(figure, target, met) of one part's result, for the Markdown table."""
  if part in ('gpt2_small', 'bench_1b'):
    figure = (f'MFU {result["mfu"]:.3f}, {result["tokens_per_sec"]:.0f} tokens/s, {result["step_ms"]} ms/step, '
              f'{result["params"] / 1e6:.1f}M params, peak mem {result.get("peak_memory_gib")} GiB, '
              f'compile {result["compile_s"]} s')
    return figure, 'MFU >= 0.55' if part == 'gpt2_small' else 'MFU (report)', (
        result['mfu'] >= 0.55 if part == 'gpt2_small' else None)
  if part == 'shakespeare_char':
    figure = (f'val loss {result["eval_loss"]:.4f} after {result["steps"]} steps in {result["wall_s"]} s '
              f'(first <= {TARGET_LOSS} at step {result["first_step_at_target"]})')
    met = result['eval_loss'] <= TARGET_LOSS and result['wall_s'] < 90
    return figure, f'val loss <= {TARGET_LOSS} in < 90 s', met
  batches = result['decode']['batches']
  figure = '; '.join(f'b={b}: {d["tokens_per_sec"]:.0f} tokens/s, {d["per_token_ms"]} ms/token, '
                     f'{d["speedup_vs_no_cache"]}x vs no cache' for b, d in batches.items())
  return figure, 'tokens/s (report)', None


def write(rows: list, out: pathlib.Path) -> None:
  (out / 'gpu_bench.json').write_text(json.dumps(dict(tiny=FLAGS.tiny, parts=rows), indent=1) + '\n')
  lines = ['| part | config | figure | target | met | error |', '|---|---|---|---|---|---|']
  for row in rows:
    figure, target, met = ('', '', None)
    if 'result' in row:
      try:
        figure, target, met = headline(row['part'], row['result'])
      except (KeyError, TypeError) as e:  # a result without the expected fields
        figure = f'(unreadable result: {e!r})'
    cells = [row['part'], f'{row["config"]} {row["overrides"]}', figure, target,
             '' if met is None else 'yes' if met else 'no', row.get('error', '')]
    lines.append('| ' + ' | '.join(str(c).replace('|', '/').replace('\n', ' ') for c in cells) + ' |')
  (out / 'gpu_bench.md').write_text('\n'.join(lines) + '\n')


def main(argv):
  del argv
  if not FLAGS.out:
    sys.exit('give --out=DIR')
  out = pathlib.Path(FLAGS.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  if FLAGS.manual_dir:
    FLAGS.manual_dir = os.path.abspath(FLAGS.manual_dir)
  os.chdir(ROOT)  # the parts name their configs relative to the repository
  specs = TINY if FLAGS.tiny else GPU
  if FLAGS.child:
    print(json.dumps(train_shakespeare(specs[FLAGS.child], FLAGS.manual_dir, out)), flush=True)
    return
  unknown = sorted(set(FLAGS.parts) - set(PARTS))
  if unknown:
    sys.exit(f'--parts: unknown {", ".join(unknown)}; choose from {", ".join(PARTS)}.')

  def one(name: str) -> dict:
    started = time.time()
    row = dict(run_part(name, specs[name], out), seconds=round(time.time() - started, 1))
    print(f'[gpu_bench] {name}: {row.get("error", "done")} ({row["seconds"]} s)', flush=True)
    return row

  done = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, FLAGS.jobs)) as pool:
    futures = {pool.submit(one, name): name for name in FLAGS.parts}
    for future in concurrent.futures.as_completed(futures):
      done[futures[future]] = future.result()
      write([done[n] for n in FLAGS.parts if n in done], out)  # after every part: a later crash keeps it
  rows = [done[n] for n in FLAGS.parts]
  print(json.dumps(dict(out=str(out), parts=len(rows), errors=sum('error' in r for r in rows))), flush=True)


if __name__ == '__main__':
  app.run(main)
