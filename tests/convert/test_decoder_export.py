"""llm_jax decoder runs exported, loaded back by transformers' AutoModelForCausalLM: the same logits,
and convert.from_pretrained of the export gives back the run's parameters and tokenizer.

Each run is a tiny decoder in one family's layout (GPT-2: learned positions, LayerNorm, biases;
BLOOM: ALiBi and a norm after the embeddings; Llama: rope, RMSNorm, SwiGLU, grouped-query
heads, untied, scanned) with large random weights of llm_jax's own initialization (no Hugging
Face file involved), saved as a checkpoint; its 'pretrained' tokenizer (a byte-level or a
Llama-style BPE) sits in the run's cache dir as training leaves it.
"""

import jax
import numpy as np
import pytest
import transformers

from llm_jax import config as config_lib
from llm_jax import convert
from llm_jax.data import tokenizers
from llm_jax.models import blocks
from llm_jax.train import trainer as trainer_lib
from tests.convert import decoder_refs as refs
from tests.convert import runs

LAYOUTS = {
    'gpt2': {'model.pos_encoding': 'learned', 'model.norm': 'layernorm', 'model.use_bias': True,
             'model.mlp_activation': 'gelu_tanh', 'model.mlp_dim': 96},
    'bloom': {'model.pos_encoding': 'alibi', 'model.norm': 'layernorm', 'model.use_bias': True,
              'model.embed_norm': True, 'model.mlp_activation': 'gelu_tanh', 'model.num_heads': 8},
    'llama': {'model.pos_encoding': 'rope', 'model.rope_theta': 500.0, 'model.norm': 'rmsnorm',
              'model.mlp_activation': 'swiglu', 'model.mlp_dim': 96, 'model.num_kv_heads': 2,
              'model.tie_embeddings': False, 'model.scan_layers': True},
}
ARCHITECTURES = {'gpt2': 'GPT2LMHeadModel', 'bloom': 'BloomForCausalLM', 'llama': 'LlamaForCausalLM'}
STYLES = {'gpt2': 'gpt2', 'bloom': 'bloom', 'llama': 'llama'}


def decoder_config(tmp, layout: str, tokenizer_dir: str):
  """configs/default.py made a tiny decoder of ``layout`` with a 'pretrained' tokenizer."""
  return config_lib.from_file('configs/default.py', **{
      'model.num_layers': refs.LAYERS, 'model.emb_dim': 64, 'model.num_heads': 4, 'model.max_len': refs.POSITIONS,
      'model.attention_kernel': 'xla', 'model.init_std': 0.5, 'data.seq_len': 16,
      'data.tokenizer': 'pretrained', 'data.tokenizer_path': tokenizer_dir, 'data.cache_dir': str(tmp / 'cache'),
      'train.batch_size': 2, 'sample.prompt': '', **LAYOUTS[layout]})


def _perturbed(params, seed: int = 0):
  """Norm scales and biases moved off 1 and 0 (scanned or not)."""
  rng = np.random.default_rng(seed)

  def move(path, x):
    x = np.asarray(x, np.float32)
    name = str(getattr(path[-1], 'key', ''))
    return (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32) if name in ('scale', 'bias') or name.endswith(
        '_bias') else x

  return jax.tree_util.tree_map_with_path(move, params)


@pytest.fixture(scope='module', params=list(LAYOUTS))
def exported(request, tmp_path_factory):
  layout = request.param
  tmp = tmp_path_factory.mktemp(f'export_{layout}')
  (tmp / 'tok').mkdir()
  refs.tokenizer(STYLES[layout]).save(str(tmp / 'tok' / 'tokenizer.json'))
  config = decoder_config(tmp, layout, str(tmp / 'tok'))
  config_lib.validate(config)
  kind = trainer_lib.make_kind(config, refs.VOCAB)
  from tests.convert import refs as bert_refs
  params = _perturbed(bert_refs.fresh(kind))
  runs.save(config, tmp / 'run', params)
  tokenizers.tokenizer_class('pretrained').train((), tokenizer_path=str(tmp / 'tok')).save(str(tmp / 'cache'))
  result = convert.export(str(tmp / 'run'), str(tmp / 'hf'))
  model, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp / 'hf'), output_loading_info=True)
  return dict(layout=layout, kind=kind, params=params, result=result, model=model.eval(), info=info,
              out=tmp / 'hf', tok=tmp / 'tok')


def test_transformers_loads_every_tensor(exported):
  info = exported['info']
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  want = ARCHITECTURES[exported['layout']]
  assert exported['result']['architecture'] == want and type(exported['model']).__name__ == want


def test_same_logits_as_llm_jax(exported):
  ids, mask = refs.left_padded(seed=5, batch=5)
  got, want = refs.ours(exported['kind'], exported['params'], ids, mask), refs.theirs(exported['model'], ids, mask)
  real = mask.astype(bool)
  assert np.abs(want[real]).max() > 5
  assert float(np.max(np.abs(got[real] - want[real]))) < 1e-4
  np.testing.assert_array_equal(got[real].argmax(-1), want[real].argmax(-1))
  assert len(np.unique(want[real].argmax(-1))) > 1


def test_from_pretrained_gives_back_the_params(exported):
  back = convert.from_pretrained(str(exported['out']))
  assert back.kind.cfg.pos_encoding == exported['kind'].cfg.pos_encoding
  want = blocks.to_unrolled(exported['params'])
  got = blocks.to_unrolled(jax.device_get(back.params))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda g, w: np.testing.assert_array_equal(np.asarray(g), np.asarray(w, np.float32)), got, want)


def test_tokenizer_travels(exported):
  out, style = exported['out'], STYLES[exported['layout']]
  assert exported['result']['tokenizer'] == ['tokenizer.json', 'tokenizer_config.json'], exported['result']
  text = 'The big red cat sat on the mat, and the dog ran fast!'
  want = refs.tokenizer(style).encode(text, add_special_tokens=False).ids
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert hf_tok(text, add_special_tokens=False)['input_ids'] == want
  assert hf_tok.eos_token == refs.EOS_TOKEN[style]
  assert exported['model'].config.eos_token_id == refs.EOS[style]
  back = convert.from_pretrained(str(out))
  assert back.eos_id == back.tokenizer.eos_id == refs.EOS[style]
  assert list(back.tokenizer.encode(text)) == want
