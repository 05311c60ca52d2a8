r"""Does pretraining show? bert_tiny pretrained on the embedded corpus, then fine-tuned on the
offline classification task, against the same model trained from scratch and the majority class.

  python experiments/bert_tiny_finetune/run.py --out=runs/bert_tiny_finetune [--pretrain_steps=1200]

Steps, each a ``python -m llm_jax.main`` run as a user would start it (a finished one is
reused, an interrupted one resumes):
1. ``configs/bert_tiny.py`` into OUT/pretrain (masked LM). Its eval MLM loss is set against
   the unigram entropy of the masked tokens, H = -sum_v p(v) log p(v) over the targets of
   the eval batches: a model that learned nothing beyond token frequencies scores H.
2. ``configs/bert_tiny_shuffled.py`` into OUT/finetune_lrLR, from OUT/pretrain's parameters
   and tokenizer (its classifier head starts fresh), at each learning rate of ``--finetune_lrs``;
3. the same into OUT/scratch_lrLR without init_from (same tokenizer, same labelled examples);
4. the majority class of the eval split.
Each of fine-tuned and from-scratch is judged by its best learning rate (final eval accuracy).
Writes OUT/results.json and OUT/results.md; the last line printed is the JSON.
"""

import json
import math
import pathlib
import subprocess
import sys

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'runs/bert_tiny_finetune', 'Output directory (one workdir per run inside).')
flags.DEFINE_integer('pretrain_steps', 0, 'Override configs/bert_tiny.py train.steps (0: keep).')
flags.DEFINE_integer('finetune_steps', 0, 'Override configs/bert_tiny_shuffled.py train.steps (0: keep).')
flags.DEFINE_list('finetune_lrs', ['1e-4', '5e-4'], 'Learning rates for fine-tuning and from scratch alike.')


def _train(config: str, workdir: pathlib.Path, *flags_):
  command = [sys.executable, '-m', 'llm_jax.main', f'--config={ROOT / "configs" / config}', f'--workdir={workdir}',
             *flags_]
  print('$', ' '.join(command), flush=True)
  subprocess.run(command, check=True, cwd=ROOT)
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  return [r for r in rows if any(k.startswith('eval_') for k in r)][-1]


def _masked_token_entropy(workdir: pathlib.Path) -> float:
  """H of the target tokens of the MLM eval batches the pretraining run evaluates on."""
  import numpy as np
  from llm_jax import data as data_lib
  from llm_jax import workdir as workdir_lib
  config = workdir_lib.load_config(str(workdir))
  dataset = data_lib.dataset_for(config, global_batch=config.train.batch_size, seed=config.seed,
                                 cache_dir=data_lib.cache_dir(config, str(workdir)))
  counts = {}
  for batch in dataset.eval_batches(config.eval.max_batches):
    for token, weight in zip(batch['mlm_targets'].ravel(), batch['mlm_weights'].ravel()):
      if weight:
        counts[int(token)] = counts.get(int(token), 0) + 1
  p = np.array(list(counts.values()), np.float64)
  p /= p.sum()
  return float(-(p * np.log(p)).sum())


def _majority(workdir: pathlib.Path) -> float:
  from llm_jax import data as data_lib
  from llm_jax import workdir as workdir_lib
  config = workdir_lib.load_config(str(workdir))
  dataset = data_lib.dataset_for(config, global_batch=config.train.batch_size, seed=config.seed,
                                 cache_dir=data_lib.cache_dir(config, str(workdir)))
  labels = []
  for batch in dataset.eval_batches(0):
    labels += [int(l) for l, w in zip(batch['labels'], batch['example_weights']) if w]
  return max(labels.count(c) for c in set(labels)) / len(labels)


def main(argv):
  del argv
  out = pathlib.Path(FLAGS.out).resolve()
  pre_flags = [f'--config.train.steps={FLAGS.pretrain_steps}'] if FLAGS.pretrain_steps else []
  fine_flags = [f'--config.train.steps={FLAGS.finetune_steps}'] if FLAGS.finetune_steps else []
  pretrain = _train('bert_tiny.py', out / 'pretrain', *pre_flags)
  tokenizer = [f'--config.data.tokenizer_path={out / "pretrain"}']
  finetune, scratch = {}, {}
  for lr in FLAGS.finetune_lrs:
    lr_flags = [f'--config.train.learning_rate={lr}', *tokenizer, *fine_flags]
    finetune[lr] = _train('bert_tiny_shuffled.py', out / f'finetune_lr{lr}', f'--config.init_from={out / "pretrain"}',
                          *lr_flags)
    scratch[lr] = _train('bert_tiny_shuffled.py', out / f'scratch_lr{lr}', *lr_flags)
  entropy = _masked_token_entropy(out / 'pretrain')
  evals = lambda row: {k: v for k, v in row.items() if k.startswith('eval_')}
  best = lambda runs: max(runs, key=lambda lr: runs[lr]['eval_accuracy'])
  result = dict(
      pretrain=dict(eval_loss=pretrain['eval_loss'], eval_mlm_accuracy=pretrain.get('eval_mlm_accuracy'),
                    masked_token_unigram_entropy=round(entropy, 4),
                    nats_below_unigram=round(entropy - pretrain['eval_loss'], 4)),
      finetune={lr: evals(r) for lr, r in finetune.items()}, scratch={lr: evals(r) for lr, r in scratch.items()},
      best_finetune_lr=best(finetune), best_scratch_lr=best(scratch),
      majority_class_accuracy=round(_majority(out / f'finetune_lr{FLAGS.finetune_lrs[0]}'), 4))
  (out / 'results.json').write_text(json.dumps(result, indent=1))
  rows = [(f'pretrained, then fine-tuned, lr {lr}', r) for lr, r in finetune.items()]
  rows += [(f'from scratch, lr {lr}', r) for lr, r in scratch.items()]
  table = ['| model | eval accuracy | eval F1 | eval MCC |', '|---|---|---|---|']
  table += [f'| {name} | {r.get("eval_accuracy", math.nan):.4f} | {r.get("eval_f1", math.nan):.4f} | '
            f'{r.get("eval_mcc", math.nan):.4f} |' for name, r in rows]
  table.append(f'| majority class | {result["majority_class_accuracy"]:.4f} | | |')
  table.append('')
  table.append(f'Pretraining: eval MLM loss {pretrain["eval_loss"]:.4f} nats against a unigram entropy of the masked '
               f'tokens of {entropy:.4f} ({entropy - pretrain["eval_loss"]:.2f} nats below).')
  (out / 'results.md').write_text('\n'.join(table) + '\n')
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
