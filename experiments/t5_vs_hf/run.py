r"""T5 (t5-small's shapes), llm_jax against Hugging Face's PyTorch T5ForConditionalGeneration, side by side.

  python experiments/t5_vs_hf/run.py [--parts=train,beam,greedy] [--d_model=512 --d_kv=64 --d_ff=2048
      --layers=6 --heads=8 --vocab=32128] [--source_len=128 --target_len=128 --batch=16 --steps=2]
      [--prompt_len=20 --max_length=50 --num_beams=5] [--rounds=5] [--out=FILE.json]

Same process, same machine, float32, random weights, the original T5 layout (relative
position buckets, RMS norms, no attention scaling, ReLU, tied output rescaled by
d_model^-0.5); the defaults are t5-small's shapes (60.5M parameters).

train   one optimizer step on ``--batch`` rows of ``--source_len`` source and ``--target_len``
        target tokens (random ids, no padding), AdamW (lr 1e-4, b1 0.9, b2 0.999, eps 1e-8,
        weight decay 0.01, no clipping), dropout 0 on both sides:
        - llm_jax: the real training step (``train/trainer.py``'s ``build_trainer``: jit, the
          state donated, ``--attention_kernel``) on the kind's synthetic seq2seq batches;
        - transformers: ``model.train()``, ``model(input_ids, attention_mask, labels)`` (it
          shifts the labels into the decoder inputs and computes the loss),
          ``loss.backward()``, ``torch.optim.AdamW.step()``, ``zero_grad()``, on the same ids.
        Tokens are counted as source + target tokens per step on both sides (target tokens
        alone are reported too; the ratio is the same).
beam    ``generate(num_beams=5, early_stopping=True, max_length=50)`` from one random source of
        ``--prompt_len`` tokens: ``transformers.generate`` on the model, and ``llm_jax``'s
        ``generation.api.generate`` on the model ``convert.from_pretrained`` loads from the
        same saved directory. No eos (every call makes max_length - 1 new tokens on both
        sides); the token ids must be equal (the run stops otherwise).
greedy  the same with ``do_sample=False``, for reference.

Each part runs once per side untimed first (llm_jax compiles then; ``--warmup`` more steps
for train), then ``--rounds`` rounds alternate between the sides so that a busy machine
slows both; the median round of each side counts (the fastest rounds' ratio and this
process's CPU seconds per step or call are reported too). torch runs with
``--torch_threads`` threads (the machine's cores by default). Alternating does not make a
loaded machine fair: with as many torch threads as cores, torch's threads wait for each
other at every parallel region while other processes hold the cores, and its CPU seconds
per step grow to several times what one thread needs, so a busy machine slows
transformers far more than llm_jax (README.md has the figures). Before believing a ratio
from a busy machine, compare the CPU seconds or rerun with ``--torch_threads=1``. The last
line printed is the JSON result, also written to ``--out`` (default: results.json next
to this file).
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_list('parts', ['train', 'beam', 'greedy'], 'What to measure: train, beam, greedy.')
flags.DEFINE_integer('d_model', 512, 'Model width.')
flags.DEFINE_integer('d_kv', 64, 'Head dim.')
flags.DEFINE_integer('d_ff', 2048, 'Feed-forward width.')
flags.DEFINE_integer('layers', 6, 'Encoder blocks (and decoder blocks).')
flags.DEFINE_integer('heads', 8, 'Attention heads.')
flags.DEFINE_integer('vocab', 32128, 'Vocabulary.')
flags.DEFINE_integer('buckets', 32, 'Relative position buckets.')
flags.DEFINE_integer('max_distance', 128, 'Relative position max distance.')
flags.DEFINE_integer('source_len', 128, 'train: source tokens per row.')
flags.DEFINE_integer('target_len', 128, 'train: target tokens per row.')
flags.DEFINE_integer('batch', 16, 'train: rows per step.')
flags.DEFINE_integer('steps', 2, 'train: timed steps per round and side.')
flags.DEFINE_integer('warmup', 1, 'train: untimed steps per side after the first (compiling) one.')
flags.DEFINE_integer('prompt_len', 20, 'beam/greedy: source tokens (batch 1).')
flags.DEFINE_integer('max_length', 50, 'beam/greedy: decoder start token + new tokens, as Hugging Face counts.')
flags.DEFINE_integer('num_beams', 5, 'beam: beams.')
flags.DEFINE_integer('rounds', 5, 'Alternating timed rounds per part; the median of each side counts.')
flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads (0: the machine\'s cores).')
flags.DEFINE_string('attention_kernel', 'auto', 'llm_jax model.attention_kernel (train and decoding).')
flags.DEFINE_string('out', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results.json'),
                    'Write the JSON result here (empty: nowhere).')


def hf_config():
  import transformers
  return transformers.T5Config(
      vocab_size=FLAGS.vocab, d_model=FLAGS.d_model, d_kv=FLAGS.d_kv, d_ff=FLAGS.d_ff, num_layers=FLAGS.layers,
      num_decoder_layers=FLAGS.layers, num_heads=FLAGS.heads, relative_attention_num_buckets=FLAGS.buckets,
      relative_attention_max_distance=FLAGS.max_distance, dropout_rate=0.0, feed_forward_proj='relu',
      tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def rounds(sides: dict, n: int) -> dict:
  """{side: [seconds per round]}: ``n`` rounds, the sides alternating within each."""
  times = {name: [] for name in sides}
  for _ in range(n):
    for name, fn in sides.items():
      times[name].append(fn())
  return times


def summary(seconds: list) -> dict:
  return dict(median_s=round(statistics.median(seconds), 4), min_s=round(min(seconds), 4),
              max_s=round(max(seconds), 4))


# ----------------------------------------------------------------------------- train

def _t5_config():
  from llm_jax import config as config_lib
  from llm_jax.models.encoder_decoder import T5_LAYOUT
  config = config_lib.base_config()
  config.model.update(T5_LAYOUT)
  config.model.update(num_layers=FLAGS.layers, num_decoder_layers=FLAGS.layers, num_heads=FLAGS.heads,
                      emb_dim=FLAGS.d_model, head_dim=FLAGS.d_kv, mlp_dim=FLAGS.d_ff, relative_buckets=FLAGS.buckets,
                      relative_max_distance=FLAGS.max_distance, dropout_rate=0.0,
                      attention_kernel=FLAGS.attention_kernel)
  config.data.update(seq_len=FLAGS.source_len, target_len=FLAGS.target_len, tokenizer='byte',
                     eval_split='')  # synthetic batches: no tokenizer is trained or read
  config.train.update(batch_size=FLAGS.batch, learning_rate=1e-4, b2=0.999, eps=1e-8, weight_decay=0.01,
                      decay_norms=True, grad_clip=0.0, warmup_steps=0, schedule='constant')
  return config


def _llm_jax_train():
  """(step, sync, info): llm_jax's train step at the flags' shapes, cycling over 4 batches."""
  import jax
  from llm_jax.bench import common
  from llm_jax.train import trainer as trainer_lib
  config = _t5_config()
  dataset = common.synthetic_dataset(config, FLAGS.vocab)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = trainer_lib.build_trainer(config, workdir, dataset=dataset)
  host_batches = [dataset.train_batch(i) for i in range(4)]
  with trainer.context():
    state = trainer.init()
    batches = [trainer.device_batch(b) for b in host_batches]
  holder = {'state': state, 'i': 0}

  def step():
    with trainer.context():
      holder['state'], metrics = trainer.train_step(holder['state'], batches[holder['i'] % 4])
    holder['i'] += 1
    return metrics

  params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
  return step, jax.block_until_ready, dict(params=int(params), attention_kernel=config.model.attention_kernel,
                                           jax=jax.__version__), host_batches


def _torch_train(host_batches):
  """(step, sync, info): T5ForConditionalGeneration + torch AdamW on the same ids."""
  import numpy as np
  import torch
  import transformers
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf_config())
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
  tensors = [dict(input_ids=torch.as_tensor(b['encoder_inputs'].astype(np.int64)),
                  attention_mask=torch.as_tensor((b['encoder_segment_ids'] > 0).astype(np.int64)),
                  labels=torch.as_tensor(b['targets'].astype(np.int64))) for b in host_batches]
  holder = {'i': 0}

  def step():
    out = model(**tensors[holder['i'] % 4])
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    holder['i'] += 1
    return out.loss.detach()

  return step, float, dict(params=sum(p.numel() for p in model.parameters()),
                           attention=getattr(model.config, '_attn_implementation', None))


def _timed_steps(step, sync, n: int, cpu: list):
  """A round of ``n`` steps -> wall seconds per step; appends this process's CPU seconds per step to
  ``cpu`` (all threads: less disturbed by other processes than wall time, though spinning threads count)."""
  def run():
    start, start_cpu = time.perf_counter(), sum(os.times()[:2])
    out = None
    for _ in range(n):
      out = step()
    sync(out)
    cpu.append((sum(os.times()[:2]) - start_cpu) / n)
    return (time.perf_counter() - start) / n
  return run


def compare_train() -> dict:
  ours, our_sync, our_info, host_batches = _llm_jax_train()
  theirs, their_sync, their_info = _torch_train(host_batches)
  first = {}
  for name, step, sync in (('llm_jax', ours, our_sync), ('transformers', theirs, their_sync)):
    start = time.perf_counter()
    sync(step())
    first[name] = round(time.perf_counter() - start, 2)
    if FLAGS.warmup:
      _timed_steps(step, sync, FLAGS.warmup, [])()
  cpu = {'llm_jax': [], 'transformers': []}
  times = rounds({'llm_jax': _timed_steps(ours, our_sync, FLAGS.steps, cpu['llm_jax']),
                  'transformers': _timed_steps(theirs, their_sync, FLAGS.steps, cpu['transformers'])}, FLAGS.rounds)
  tokens = FLAGS.batch * (FLAGS.source_len + FLAGS.target_len)
  targets = FLAGS.batch * FLAGS.target_len
  row = {}
  for name, info in (('llm_jax', our_info), ('transformers', their_info)):
    s = statistics.median(times[name])
    row[name] = dict(step_ms=round(1000 * s, 1), tokens_per_s=round(tokens / s, 1),
                     target_tokens_per_s=round(targets / s, 1), first_step_s=first[name],
                     step_ms_each_round=[round(1000 * t, 1) for t in times[name]],
                     cpu_s_per_step=round(statistics.median(cpu[name]), 2), **info)
  row['speedup'] = round(statistics.median(times['transformers']) / statistics.median(times['llm_jax']), 3)
  row['speedup_of_fastest'] = round(min(times['transformers']) / min(times['llm_jax']), 3)
  ours_cpu = statistics.median(cpu['llm_jax'])  # os.times counts in clock ticks: 0 for a tiny step
  row['cpu_s_ratio'] = round(statistics.median(cpu['transformers']) / ours_cpu, 3) if ours_cpu else None
  row['tokens_per_step'] = dict(source_plus_target=tokens, target=targets)
  print('train', json.dumps(row), flush=True)
  return row


# ----------------------------------------------------------------------------- decoding

DECODINGS = {
    'beam': lambda: dict(num_beams=FLAGS.num_beams, early_stopping=True, do_sample=False),
    'greedy': lambda: dict(num_beams=1, do_sample=False),
}


def compare_decoding(names) -> dict:
  import numpy as np
  import torch
  import transformers
  from llm_jax import convert
  from llm_jax.generation import api
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(hf_config()).eval()
  with tempfile.TemporaryDirectory() as directory:
    hf.save_pretrained(directory, safe_serialization=True)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    pre = convert.from_pretrained(directory, attention_kernel=FLAGS.attention_kernel)
  source = np.random.default_rng(0).integers(2, FLAGS.vocab, (1, FLAGS.prompt_len))
  mask = np.ones_like(source)
  rows = {}
  for name in names:
    kw = dict(DECODINGS[name](), max_length=FLAGS.max_length, pad_token_id=0)

    def theirs():
      with torch.no_grad():
        return hf.generate(torch.tensor(source), attention_mask=torch.tensor(mask), eos_token_id=None,
                           **kw).numpy()

    def ours():
      return np.asarray(api.generate(pre, source, mask, eos_token_id=[], **kw))

    start = time.perf_counter()
    first_ours = ours()
    first = time.perf_counter() - start
    first_theirs = theirs()
    if not np.array_equal(first_ours, first_theirs):
      raise SystemExit(f'{name}: the token ids differ: llm_jax {first_ours.tolist()} vs transformers '
                       f'{first_theirs.tolist()}')

    cpu = {'llm_jax': [], 'transformers': []}

    def timed(fn, cpu_seconds):
      def run():
        start, start_cpu = time.perf_counter(), sum(os.times()[:2])
        fn()
        cpu_seconds.append(sum(os.times()[:2]) - start_cpu)
        return time.perf_counter() - start
      return run

    times = rounds({'llm_jax': timed(ours, cpu['llm_jax']), 'transformers': timed(theirs, cpu['transformers'])},
                   FLAGS.rounds)
    new_tokens = first_ours.shape[1] - 1
    row = {side: dict(**summary(t), new_tokens_per_s=round(new_tokens / statistics.median(t), 1),
                      cpu_s=round(statistics.median(cpu[side]), 4))
           for side, t in times.items()}
    row['llm_jax']['first_call_s'] = round(first, 2)
    row.update(speedup=round(statistics.median(times['transformers']) / statistics.median(times['llm_jax']), 3),
               speedup_of_fastest=round(min(times['transformers']) / min(times['llm_jax']), 3),
               same_tokens=True, new_tokens=int(new_tokens), settings={k: v for k, v in kw.items()})
    print(name, json.dumps(row), flush=True)
    rows[name] = row
  return rows


# ----------------------------------------------------------------------------- report

def table(result: dict) -> str:
  lines = ['| part (median round) | llm_jax | transformers | speedup | fastest rounds | target |',
           '|---|---|---|---|---|---|']
  if 'train' in result:
    r = result['train']
    lines.append(f"| train step, tokens/s (source+target) | {r['llm_jax']['tokens_per_s']:.0f} "
                 f"({r['llm_jax']['step_ms']:.0f} ms) | {r['transformers']['tokens_per_s']:.0f} "
                 f"({r['transformers']['step_ms']:.0f} ms) | {r['speedup']:.2f}x | {r['speedup_of_fastest']:.2f}x "
                 f"| 1.5x |")
  for name, target in (('beam', '2x'), ('greedy', '-')):
    if name in result:
      r = result[name]
      lines.append(f"| {name}, {r['new_tokens']} new tokens, s | {r['llm_jax']['median_s']:.3f} | "
                   f"{r['transformers']['median_s']:.3f} | {r['speedup']:.2f}x | {r['speedup_of_fastest']:.2f}x "
                   f"| {target} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  unknown = set(FLAGS.parts) - {'train', 'beam', 'greedy'}
  if unknown:
    raise app.UsageError(f'--parts: {sorted(unknown)} not among train, beam, greedy.')
  import llm_jax  # noqa: F401  (first: its XLA defaults are set before JAX starts)
  from llm_jax import hostmem
  hostmem.run_cpu_computations_inline()
  import jax
  import torch
  import transformers
  torch.set_num_threads(FLAGS.torch_threads or os.cpu_count() or 1)
  load_before = os.getloadavg()
  start = time.perf_counter()
  result = dict(date=time.strftime('%Y-%m-%d'), device=jax.devices()[0].device_kind, cores=os.cpu_count(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, jax=jax.__version__, dtype='float32',
                shapes=dict(d_model=FLAGS.d_model, d_kv=FLAGS.d_kv, d_ff=FLAGS.d_ff, layers=FLAGS.layers,
                            heads=FLAGS.heads, vocab=FLAGS.vocab, source_len=FLAGS.source_len,
                            target_len=FLAGS.target_len, batch=FLAGS.batch, prompt_len=FLAGS.prompt_len,
                            max_length=FLAGS.max_length, num_beams=FLAGS.num_beams),
                rounds=FLAGS.rounds, steps=FLAGS.steps, attention_kernel=FLAGS.attention_kernel)
  if 'train' in FLAGS.parts:
    result['train'] = compare_train()
  decodings = [name for name in DECODINGS if name in FLAGS.parts]
  if decodings:
    result.update(compare_decoding(decodings))
  result['wall_s'] = round(time.perf_counter() - start, 1)
  result['loadavg_before'] = [round(x, 2) for x in load_before]
  result['loadavg_after'] = [round(x, 2) for x in os.getloadavg()]
  print(table(result), flush=True)
  text = json.dumps(result)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)
      f.write('\n')
  print(text)


if __name__ == '__main__':
  app.run(main)
