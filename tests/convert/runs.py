"""Tiny BERT-layout encoder runs started from a Hugging Face directory: through the real training
path (config file, ``build_trainer``, ``init_from.load``: ``start``), or just its parameters
(``converted``), saved as a workdir an export can read (``save``).

The trainer's data is ``SyntheticDataset`` batches of the kind's schema (the encoder
featurizers are not needed to test weights), over the reference model's vocabulary.
"""

import json
import os
import types

import jax
import numpy as np

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import workdir as workdir_lib
from llm_jax.bench import common
from llm_jax.train import init_from
from llm_jax.train import trainer as trainer_lib
from tests.convert import refs

WORDS = ('the a cat dog sat on mat ran fast slow big small red blue green house tree car road sun moon star '
         'is was and or but not to of in it he she they we you i my your his her our their this that').split()


def encoder_config(tmp, head: str, init: str, scan: bool = False, **overrides):
  """configs/default.py made a BERT of the reference shapes (``refs``)."""
  return config_lib.from_file('configs/default.py', **{
      'model.kind': 'encoder', 'model.head': head, 'model.num_classes': 3 if head == 'classify' else 0,
      'model.num_layers': refs.LAYERS, 'model.emb_dim': refs.WIDTH, 'model.num_heads': refs.HEADS,
      'model.mlp_dim': refs.MLP, 'model.max_len': refs.POSITIONS, 'model.norm_placement': 'post',
      'model.embed_norm': True, 'model.type_vocab_size': 2, 'model.use_bias': True,
      'model.mlp_activation': 'gelu_exact', 'model.norm_eps': 1e-12, 'model.scan_layers': scan,
      'model.attention_kernel': 'xla', 'model.init_std': 0.5,
      'data.seq_len': 16, 'data.cache_dir': str(tmp / 'cache'), 'train.batch_size': 2,
      'init_from': init, 'sample.prompt': '', **overrides})


def start(config, workdir):
  """(trainer, fresh params, params started from config.init_from)."""
  dataset = common.synthetic_dataset(config, vocab_size=refs.VOCAB)
  trainer = trainer_lib.build_trainer(config, str(workdir), dataset=dataset)
  with trainer.context():
    state = trainer.init()
    params = init_from.load(config.init_from, trainer, state.params)
  return trainer, state, params


def save(config, workdir, params, step: int = 1) -> None:
  """The run's config record and one finished checkpoint holding ``params`` (the optimizer state
  left empty: an export reads the parameters only)."""
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.record(str(workdir), config, step=0, event='start', changes={})
  state = types.SimpleNamespace(params=params, step=np.int32(step), opt_state={}, rng=np.zeros(2, np.uint32))
  ckpts = ckpt_lib.Checkpoints(str(workdir), config.checkpoint)
  try:
    ckpts.save(step, state, {'data_position': step, 'model_kind': config.model.kind, 'skipped_steps': 0})
  finally:
    ckpts.close()


def converted(config, vocab: int = refs.VOCAB):
  """(kind, params) of ``config``'s model started from config.init_from by ``convert.load_params``
  (without a trainer: the heads the source lacks keep the kind's own initialization)."""
  from llm_jax import convert
  kind = trainer_lib.make_kind(config, vocab)
  params, _ = convert.load_params(config.init_from, kind, refs.fresh(kind))
  return kind, params


def wordpiece_files(cache_dir) -> str:
  """What a WordPiece tokenizer of ``refs.VOCAB`` ids leaves in a run's cache dir: vocab.txt, the
  ``tokenizers`` JSON (under a name of its own) and llm_jax's tokenizer.json spec beside them.
  Returns the JSON's path."""
  from tokenizers import BertWordPieceTokenizer
  os.makedirs(cache_dir, exist_ok=True)
  specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  letters = list('abcdefghijklmnopqrstuvwxyz0123456789.,!?')
  tokens = specials + letters + ['##' + c for c in letters[:26]] + list(WORDS)
  tokens += [f'w{i}' for i in range(refs.VOCAB - len(tokens))]
  with open(os.path.join(cache_dir, 'vocab.txt'), 'w') as f:
    f.write('\n'.join(tokens) + '\n')
  tokenizer = BertWordPieceTokenizer(os.path.join(cache_dir, 'vocab.txt'), lowercase=True)
  path = os.path.join(cache_dir, 'wordpiece_hf.json')
  tokenizer.save(path)
  with open(os.path.join(cache_dir, 'tokenizer.json'), 'w') as f:
    json.dump({'kind': 'wordpiece', 'vocab_size': refs.VOCAB}, f)
  return path


def host(tree):
  return jax.device_get(tree)
