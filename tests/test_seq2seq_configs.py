"""The encoder-decoder configs: each validates, its model has the published parameter count
(jax.eval_shape of the kind's init: no compute), t5-base's recipe has exactly t5-base's model
fields, and that recipe's TFDS data, offline, fails at once naming the manual directory."""

import math
import time

import flax.linen as nn
import jax
import pytest

from llm_jax import config as config_lib
from llm_jax.convert import t5 as t5_convert
from llm_jax.data import sources
from llm_jax.train import trainer as trainer_lib
from tests.data.conftest import no_network  # noqa: F401  (a fixture)

CONFIGS = ('t5_tiny', 't5_small', 't5_base_wmt14_enfr', 'transformer_base_wmt14_ende')

# (config, vocabulary, parameters). t5-small and t5-base: transformers' T5ForConditionalGeneration
# at their 32128-token vocabulary (the tied lm_head counted once; test_t5_counts_match_transformers).
# Vaswani et al.'s base model: "65 M" in their Table 3; this layout at their 37000-token shared
# vocabulary holds 6 x 3,152,384 (encoder layers: 4 projections 512x512 and the feed-forward
# 512x2048x512, with biases, 2 LayerNorms) + 6 x 4,204,032 (decoder layers: + cross-attention and its
# LayerNorm) + 37000 x 512 (the one embedding; sinusoidal positions have no parameters).
COUNTS = (('t5_small', 32128, 60_506_624), ('t5_base_wmt14_enfr', 32128, 222_903_552),
          ('transformer_base_wmt14_ende', 37000, 63_082_496))

# t5-base's config.json on the Hugging Face Hub (its model fields; older files leave out
# feed_forward_proj, relative_attention_max_distance and tie_word_embeddings: relu, 128, tied).
T5_BASE = {'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5', 'd_ff': 3072, 'd_kv': 64,
           'd_model': 768, 'decoder_start_token_id': 0, 'dropout_rate': 0.1, 'eos_token_id': 1,
           'initializer_factor': 1.0, 'is_encoder_decoder': True, 'layer_norm_epsilon': 1e-06, 'n_positions': 512,
           'num_heads': 12, 'num_layers': 12, 'pad_token_id': 0, 'relative_attention_num_buckets': 32,
           'vocab_size': 32128}


T5_TOKENIZER_IDS = 32100  # len(T5TokenizerFast.from_pretrained('t5-base')): 32000 pieces + 100 sentinels


def test_model_vocab_size_pads_the_table_and_is_never_below_the_tokenizer():
  config = _config('t5_small')
  assert config.model.vocab_size == -1 and trainer_lib.make_kind(config, 300).cfg.vocab_size == 300
  config.model.vocab_size = 384  # rows beyond the tokenizer's ids (a multiple of 128, or a checkpoint's table)
  assert trainer_lib.make_kind(config, 300).cfg.vocab_size == 384
  config.model.vocab_size = 299
  with pytest.raises(config_lib.ConfigError, match=r'model.vocab_size=299 is smaller than the tokenizer, which has '
                                                   r'300 ids; set --config.model.vocab_size=-1'):
    trainer_lib.make_kind(config, 300)
  config.model.vocab_size = 0
  with pytest.raises(config_lib.ConfigError, match='model.vocab_size=0 must be -1'):
    config_lib.validate(config)


def _config(name: str):
  return config_lib.from_file(f'configs/{name}.py')


def _count(config, vocab: int) -> int:
  kind = trainer_lib.make_kind(config, vocab)
  shapes = jax.eval_shape(kind.init, jax.random.key(0), kind.schema(1, 16))['params']
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(shapes)))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_validates(name):
  config_lib.validate(_config(name))


@pytest.mark.parametrize('name, vocab, count', COUNTS)
def test_parameter_count(name, vocab, count):
  assert _count(_config(name), vocab) == count


def test_t5_small_counts_its_own_vocabulary():
  config = _config('t5_small')
  assert config.data.vocab_size == 32000
  assert _count(config, 32000) == 60_506_624 - 128 * 512  # the docstring's 60,441,088


@pytest.mark.parametrize('d_model, d_ff, layers, heads, count', [(512, 2048, 6, 8, 60_506_624),
                                                                  (768, 3072, 12, 12, 222_903_552)])
def test_t5_counts_match_transformers(d_model, d_ff, layers, heads, count):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  with torch.device('meta'):
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers, num_heads=heads))
  assert sum(p.numel() for p in model.parameters()) == count


def test_t5_base_recipe_has_t5_base_s_model_fields():
  """What init_from checks before loading t5-base (convert/t5.py ``mismatches``), at its vocabulary."""
  config = _config('t5_base_wmt14_enfr')
  cfg = trainer_lib.make_kind(config, T5_TOKENIZER_IDS).cfg  # the table keeps the checkpoint's 32128 rows
  assert t5_convert.T5().mismatches(T5_BASE, cfg, 'T5ForConditionalGeneration', 't5-base') == []
  assert config.init_from == 't5-base' and config.data.tokenizer_path == 't5-base'


def test_t5_base_recipe_offline_fails_fast_naming_the_manual_dir(tmp_path, no_network):  # noqa: F811
  pytest.importorskip('tensorflow_datasets')
  data = _config('t5_base_wmt14_enfr').data
  data.data_dir = str(tmp_path / 'tfds')
  start = time.perf_counter()
  with pytest.raises(sources.DatasetUnavailableError) as info:
    sources.records(data, data.train_split)
  assert time.perf_counter() - start < 120  # no minutes of download retries
  message = str(info.value)
  assert "TFDS dataset 'wmt14_translate/fr-en' could not be downloaded" in message
  assert '--config.data.manual_dir=DIR' in message
  for archive in ('training-parallel-europarl-v7.tgz', 'training-parallel-un.tgz', 'training-giga-fren.tar',
                  'dev.tgz'):
    assert archive in message
