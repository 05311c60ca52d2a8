r"""A masked-LM train step, llm_jax against Hugging Face's PyTorch BertForMaskedLM, side by side.

  python experiments/bert_vs_hf/run.py [--layers=4 --width=256 --heads=4 --seq_len=128 --batch=16
      --vocab=30522 --steps=5 --rounds=5] [--out=FILE.json]

Same machine, same process, same shapes, float32: a BERT-layout encoder (post-LN, exact
GELU, token types, tied MLM decoder) of ``--layers`` x ``--width`` with a ``--vocab``
vocabulary (bert-base-uncased's by default), batches of ``--batch`` x ``--seq_len`` tokens of
which 15% are chosen for prediction, and one AdamW update per step (weight decay 0.01).

- llm_jax: ``python -m llm_jax.main``'s train step (``train/trainer.py``: jit, the state
  donated, the default attention kernel), its batches from the kind's own synthetic
  batches; the MLM head forms logits at the chosen positions only, as BERT's pretraining
  does (20 of 128 per row).
- transformers: ``BertForMaskedLM`` (its default attention, SDPA) with ``labels`` -100
  except at the same chosen positions (what DataCollatorForLanguageModeling makes),
  ``loss.backward()``, ``torch.optim.AdamW.step()``, ``zero_grad()``; torch uses this
  process's cores (``torch.set_num_threads``).

Rounds alternate (``--steps`` steps of llm_jax, then of transformers) after warm-up steps
for both, so a busy machine slows both sides; the fastest round of each counts. The last
line printed is the JSON result (also written to ``--out``): step times, tokens/s and
their ratio.
"""

import json
import math
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FLAGS = flags.FLAGS
flags.DEFINE_integer('layers', 4, 'Encoder layers.')
flags.DEFINE_integer('width', 256, 'Model width.')
flags.DEFINE_integer('heads', 4, 'Attention heads.')
flags.DEFINE_integer('seq_len', 128, 'Tokens per row.')
flags.DEFINE_integer('batch', 16, 'Rows per step.')
flags.DEFINE_integer('vocab', 30522, 'Vocabulary (bert-base-uncased: 30522).')
flags.DEFINE_integer('steps', 5, 'Timed steps per round and side.')
flags.DEFINE_integer('rounds', 5, 'Alternating rounds; the fastest of each side counts.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps per side before the rounds (after compiling).')
flags.DEFINE_string('out', '', 'Also write the JSON result here.')


def _llm_jax_side():
  """(step function, description) of llm_jax's MLM train step at the flags' shapes."""
  import jax
  from llm_jax import config as config_lib
  from llm_jax.bench import common
  from llm_jax.train import trainer as trainer_lib
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  config = config_lib.from_file(os.path.join(root, 'configs', 'bert_tiny.py'), **{
      'model.num_layers': FLAGS.layers, 'model.emb_dim': FLAGS.width, 'model.num_heads': FLAGS.heads,
      'model.dropout_rate': 0.0, 'model.max_len': 512, 'model.pos_encoding': 'learned',  # BERT's own table
      'data.seq_len': FLAGS.seq_len, 'train.batch_size': FLAGS.batch,
      'train.learning_rate': 1e-4, 'train.weight_decay': 0.01, 'train.grad_clip': 0.0, 'train.warmup_steps': 0,
      'data.tokenizer': 'byte'})  # the batches are synthetic: no tokenizer is trained or read
  dataset = common.synthetic_dataset(config, FLAGS.vocab)
  trainer = trainer_lib.build_trainer(config, '/tmp/llm_jax_bert_vs_hf', dataset=dataset)
  batches = []
  with trainer.context():
    state = trainer.init()
    batches = [trainer.device_batch(dataset.train_batch(i)) for i in range(4)]
  holder = {'state': state, 'i': 0}

  def step():
    with trainer.context():
      holder['state'], metrics = trainer.train_step(holder['state'], batches[holder['i'] % 4])
      holder['i'] += 1
    return metrics

  def sync(metrics):
    jax.block_until_ready(metrics)

  params = sum(math.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state.params))
  return step, sync, dict(params=params, attention_kernel=config.model.attention_kernel,
                          batches=[{k: v for k, v in dataset.train_batch(i).items()} for i in range(4)])


def _torch_side(batches):
  """(step function, description) of BertForMaskedLM + AdamW on the same batches."""
  import numpy as np
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=FLAGS.vocab, hidden_size=FLAGS.width,
                                   num_hidden_layers=FLAGS.layers, num_attention_heads=FLAGS.heads,
                                   intermediate_size=4 * FLAGS.width, max_position_embeddings=512,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.BertForMaskedLM(config)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  tensors = []
  for b in batches:
    labels = np.full(b['inputs'].shape, -100, np.int64)
    np.put_along_axis(labels, b['mlm_positions'], b['mlm_targets'].astype(np.int64), axis=1)
    tensors.append(dict(input_ids=torch.as_tensor(b['inputs'].astype(np.int64)),
                        attention_mask=torch.as_tensor((b['segment_ids'] > 0).astype(np.int64)),
                        token_type_ids=torch.as_tensor(b['token_types'].astype(np.int64)),
                        labels=torch.as_tensor(labels)))
  holder = {'i': 0}

  def step():
    out = model(**tensors[holder['i'] % 4])
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    holder['i'] += 1
    return out.loss.detach()

  params = sum(p.numel() for p in model.parameters())
  return step, float, dict(params=params, torch=torch.__version__,
                                              transformers=transformers.__version__,
                                              attention=getattr(config, '_attn_implementation', None),
                                              threads=torch.get_num_threads())


def _timed(step, sync, n: int) -> float:
  start = time.perf_counter()
  out = None
  for _ in range(n):
    out = step()
  sync(out)
  return (time.perf_counter() - start) / n


def main(argv):
  del argv
  from llm_jax import hostmem
  hostmem.run_cpu_computations_inline()
  ours, our_sync, our_info = _llm_jax_side()
  batches = our_info.pop('batches')
  theirs, their_sync, their_info = _torch_side(batches)
  for side, sync in ((ours, our_sync), (theirs, their_sync)):
    _timed(side, sync, FLAGS.warmup)
  best = {'llm_jax': float('inf'), 'transformers': float('inf')}
  for _ in range(FLAGS.rounds):
    best['llm_jax'] = min(best['llm_jax'], _timed(ours, our_sync, FLAGS.steps))
    best['transformers'] = min(best['transformers'], _timed(theirs, their_sync, FLAGS.steps))
  tokens = FLAGS.batch * FLAGS.seq_len
  result = dict(
      shapes=dict(layers=FLAGS.layers, width=FLAGS.width, heads=FLAGS.heads, seq_len=FLAGS.seq_len,
                  batch=FLAGS.batch, vocab=FLAGS.vocab, dtype='float32'),
      llm_jax=dict(step_ms=round(1000 * best['llm_jax'], 1), tokens_per_sec=round(tokens / best['llm_jax'], 1),
                   **our_info),
      transformers=dict(step_ms=round(1000 * best['transformers'], 1),
                        tokens_per_sec=round(tokens / best['transformers'], 1), **their_info),
      speedup=round(best['transformers'] / best['llm_jax'], 3), rounds=FLAGS.rounds, steps=FLAGS.steps,
      cores=os.cpu_count(), date=time.strftime('%Y-%m-%d'))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
