"""Logical-axis rules, the golden PartitionSpec table, mesh shapes and layout errors (1 device).

The runs on 8 simulated devices and on 2 processes are in tests/parallel/.

The golden table tests/golden/partition_specs.json holds the PartitionSpec of every
parameter of two small models under each strategy of ``parallel.STRATEGIES`` on 8
devices. A change to the rules, the strategies or a parameter's logical names fails
``test_golden_partition_specs`` until the table is regenerated and the diff reviewed:

  LLM_JAX_REGENERATE_GOLDEN=1 python -m pytest tests/test_parallel.py -k golden
  git diff tests/golden/
"""

import json
import os
import pathlib

import flax.linen as nn
import jax
import pytest

from llm_jax import config as config_lib
from llm_jax import parallel
from llm_jax.models import axes
from llm_jax.models import kinds

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'partition_specs.json'
REGENERATE = 'LLM_JAX_REGENERATE_GOLDEN=1 python -m pytest tests/test_parallel.py -k golden'
DEVICES = 8
VOCAB = 100  # divides 2 and 4 but not 8: shows the vocab fallback under tensor=8

# Small models whose parameters cover every parameter kind and logical name.
MODELS = {
    'unrolled_untied_bias_swiglu': {
        'model.num_layers': 2, 'model.emb_dim': 64, 'model.num_heads': 8, 'model.mlp_dim': 128,
        'model.use_bias': True, 'model.tie_embeddings': False, 'model.mlp_activation': 'swiglu',
        'data.seq_len': 32},
    'scanned_tied_rope_gqa': {
        'model.num_layers': 2, 'model.emb_dim': 64, 'model.num_heads': 16, 'model.num_kv_heads': 8,
        'model.head_dim': 8, 'model.mlp_dim': 128, 'model.scan_layers': True, 'model.pos_encoding': 'rope',
        'data.seq_len': 32},
    'encoder_classifier': {
        'model.kind': 'encoder', 'model.head': 'classify', 'model.num_classes': 3, 'model.type_vocab_size': 2,
        'model.embed_norm': True, 'model.norm_placement': 'post', 'model.use_bias': True,
        'model.num_layers': 2, 'model.emb_dim': 64, 'model.num_heads': 8, 'model.mlp_dim': 128,
        'data.seq_len': 32, 'data.tokenizer': 'byte'},
    'encoder_decoder_t5': {
        'model.kind': 'encoder_decoder', 'model.pos_encoding': 't5_relative', 'model.norm': 'rmsnorm',
        'model.mlp_activation': 'geglu', 'model.attention_scale': False, 'model.tie_embeddings': False,
        'model.num_layers': 2, 'model.num_decoder_layers': 1, 'model.emb_dim': 64, 'model.num_heads': 8,
        'model.mlp_dim': 128, 'data.seq_len': 32, 'data.target_len': 16, 'data.tokenizer': 'byte'},
}


def make_config(**overrides):
  return config_lib.from_file('configs/default.py', **{'sample.prompt': '', **overrides})


def abstract_variables(config):
  kind = kinds.build(config.model.kind, config_lib.model_config(config, VOCAB))
  return jax.eval_shape(kind.init, jax.random.key(0), kind.schema(2, config.data.seq_len))


# ----------------------------------------------------------------------------- rules

def test_every_name_used_has_a_rule_and_every_rule_is_used(monkeypatch):
  """Parameter names from eval_shape'd models, activation names from their constraints."""
  used_params, used_acts = set(), set()
  original = nn.with_logical_constraint

  def recording(x, names, *args, **kwargs):
    used_acts.update(n for n in names if n is not None)
    return original(x, names, *args, **kwargs)

  monkeypatch.setattr(nn, 'with_logical_constraint', recording)
  for overrides in MODELS.values():
    variables = abstract_variables(make_config(**overrides))
    for spec in jax.tree.leaves(nn.get_partition_spec(variables['params']),
                                is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
      used_params.update(n for n in spec if n is not None)
  ruled = {name for name, _ in parallel.DEFAULT_RULES}
  assert len(ruled) == len(parallel.DEFAULT_RULES), 'a logical name has two rules'
  assert used_params == set(axes.PARAM_AXES), f'parameter names {used_params} vs axes.PARAM_AXES'
  assert used_acts == set(axes.ACTIVATION_AXES), f'activation names {used_acts} vs axes.ACTIVATION_AXES'
  assert ruled - (used_params | used_acts) == set(), 'rules for names no model uses'
  assert (used_params | used_acts) - ruled == set(), 'names without a rule'
  assert set(config_lib.base_config().mesh.rules) == ruled


def test_rules_round_trip_through_the_config():
  rules = parallel.rules_from_config(config_lib.base_config().mesh.rules)
  assert dict(rules) == dict(parallel.DEFAULT_RULES)


def test_a_rule_override_changes_the_layout():
  config = make_config(**MODELS['unrolled_untied_bias_swiglu'], **{'mesh.rules.embed': '',
                                                                    'mesh.rules.mlp': 'fsdp,tensor'})
  rules = parallel.rules_from_config(config.mesh.rules)
  specs, _ = parallel.param_specs(abstract_variables(config), rules, dict(data=1, fsdp=4, tensor=2))
  assert specs['layer_0']['mlp']['wi'] == jax.sharding.PartitionSpec(None, ('fsdp', 'tensor'))
  assert specs['token_embed']['embedding'] == jax.sharding.PartitionSpec('tensor', None)


def test_a_dimension_left_unsharded_is_reported():
  config = make_config(**MODELS['unrolled_untied_bias_swiglu'], **{'mesh.rules.mlp': 'fsdp,tensor'})
  rules = parallel.rules_from_config(config.mesh.rules)
  specs, notes = parallel.param_specs(abstract_variables(config), rules, dict(data=1, fsdp=4, tensor=2))
  assert specs['layer_0']['mlp']['wi'] == jax.sharding.PartitionSpec('fsdp', None)  # embed took fsdp
  assert 'layer_0/mlp/wi dim 1 (mlp) wants fsdp,tensor, which another dimension of it already uses' in notes[0]
  _, notes = parallel.param_specs(abstract_variables(make_config(**MODELS['scanned_tied_rope_gqa'])),
                                  parallel.DEFAULT_RULES, dict(data=1, fsdp=1, tensor=8))
  assert notes == ['token_embed/embedding dim 0 (vocab=100) is not divisible by tensor=8: left unsharded']


def test_a_name_without_a_rule_is_an_error_not_a_replication():
  config = make_config(**MODELS['unrolled_untied_bias_swiglu'])
  rules = tuple(r for r in parallel.DEFAULT_RULES if r[0] != axes.MLP)
  with pytest.raises(ValueError, match="logical axis 'mlp' with no rule"):
    parallel.param_specs(abstract_variables(config), rules, dict(data=1, fsdp=8, tensor=1))


# ----------------------------------------------------------------------------- golden table

def flat(tree, is_leaf=None) -> dict:
  return {'/'.join(str(k.key) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]}


def golden_table() -> dict:
  """{model: {strategy: {parameter: 'shape spec'}}} on 8 devices."""
  table = {'_regenerate': REGENERATE + '; then review git diff tests/golden/'}
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  for model_name, overrides in MODELS.items():
    variables = abstract_variables(make_config(**overrides))
    shapes = flat(variables['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    table[model_name] = {}
    for strategy in parallel.STRATEGIES:
      config = make_config(**overrides, **parallel.strategy_overrides(strategy))
      sizes = dict(zip(parallel.MESH_AXES, parallel.mesh_shape(config.mesh, DEVICES)))
      specs, _ = parallel.param_specs(variables, parallel.rules_from_config(config.mesh.rules), sizes)
      rows = {path: f'{"x".join(map(str, shapes[path].value.shape))} {tuple(spec)}'
              for path, spec in flat(specs, is_leaf=is_spec).items()}
      table[model_name][strategy] = {'_mesh': 'x'.join(map(str, sizes.values())), **rows}
  return table


def test_golden_partition_specs():
  table = golden_table()
  if os.environ.get('LLM_JAX_REGENERATE_GOLDEN'):
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(table, indent=1, sort_keys=True) + '\n')
  golden = json.loads(GOLDEN.read_text())
  changed = [f'{m}/{s}/{p}: golden {golden.get(m, {}).get(s, {}).get(p)!r} now {v!r}'
             for m, strategies in table.items() if m != '_regenerate'
             for s, params in strategies.items() for p, v in params.items()
             if golden.get(m, {}).get(s, {}).get(p) != v]
  gone = [f'{m}/{s}/{p}' for m, strategies in golden.items() if m != '_regenerate'
          for s, params in strategies.items() for p in params
          if p not in table.get(m, {}).get(s, {})]
  assert not changed and not gone, (
      f'PartitionSpecs differ from {GOLDEN} ({len(changed)} changed, {len(gone)} gone):\n'
      + '\n'.join((changed + gone)[:20]) + f'\nIf intended: {REGENERATE}, and review the diff.')


def test_golden_table_reads_as_the_strategies_say():
  golden = json.loads(GOLDEN.read_text())['unrolled_untied_bias_swiglu']
  assert golden['fsdp']['layer_0/attention/query'] == "64x8x8 ('fsdp', None, None)"
  assert golden['tensor']['layer_0/mlp/wi'] == "64x128 (None, 'tensor')"
  assert golden['tensor']['token_embed/embedding'] == '100x64 (None, None)'  # 100 % 8: unsharded
  assert golden['fsdp_tensor']['token_embed/embedding'] == "100x64 ('tensor', 'fsdp')"
  assert golden['data']['layer_0/attention/out'] == '8x8x64 (None, None, None)'
  assert golden['data_fsdp_tensor']['_mesh'] == '2x2x2'


# ----------------------------------------------------------------------------- mesh and errors

def test_mesh_shape_resolves_minus_one_and_slices():
  cfg = make_config(**{'mesh.data': -1, 'mesh.fsdp': 2, 'mesh.tensor': 2}).mesh
  assert parallel.mesh_shape(cfg, 16) == (4, 2, 2)
  cfg = make_config(**{'mesh.data': 1, 'mesh.fsdp': -1, 'mesh.dcn_data': 2}).mesh
  assert parallel.mesh_shape(cfg, 16) == (2, 8, 1)  # 2 slices of 8: data across, fsdp within
  assert parallel.mesh_shape(make_config().mesh, 1) == (1, 1, 1)


@pytest.mark.parametrize('overrides, message', [
    ({'mesh.data': 2, 'mesh.fsdp': 2}, r'data×fsdp×tensor = 2×2×1 = 4 but there are 8 devices'),
    ({'mesh.data': 3}, r'data×fsdp×tensor = 3×1×1 does not fit 8 devices'),
    ({'mesh.data': -1, 'mesh.fsdp': -1}, r'sets 2 axes to -1'),
    ({'mesh.dcn_data': 3}, r'dcn_data×dcn_fsdp = 3×1 slices does not divide the 8 devices'),
    ({'train.batch_size': 12}, r'batch_size=12 gives micro-batches of 12 rows, not divisible by the '
                               r'data=8×fsdp=1 = 8-way batch split; use a multiple of 8'),
    ({'train.batch_size': 8, 'train.micro_batches': 2, 'mesh.data': 1, 'mesh.fsdp': 8},
     r'micro-batches of 4 rows, not divisible by the data=1×fsdp=8 = 8-way batch split; use a multiple of 16'),
    ({'mesh.data': 1, 'mesh.tensor': 8, 'model.num_heads': 4},
     r"config.model.num_heads=4 is not divisible by the 8-way split of 'heads' \(config.mesh.tensor=8"),
    ({'mesh.data': 4, 'mesh.tensor': 2, 'model.num_heads': 4, 'model.num_kv_heads': 1},
     r"config.model.num_kv_heads=1 is not divisible by the 2-way split of 'kv_heads'"),
    ({'mesh.data': 1, 'mesh.fsdp': 8, 'model.emb_dim': 36, 'model.num_heads': 4},
     r"config.model.emb_dim=36 is not divisible by the 8-way split of 'embed' \(config.mesh.fsdp=8"),
    ({'mesh.data': 4, 'mesh.tensor': 2, 'model.mlp_dim': 99},
     r"config.model.mlp_dim=99 is not divisible by the 2-way split of 'mlp'"),
    ({'mesh.rules.embed': 'fsdpp'},
     r"config.mesh.rules.embed='fsdpp' names mesh axis 'fsdpp', which does not exist"),
    ({'mesh.rules.act_batch': 'data,data'}, r'uses a mesh axis twice'),
    ({'parallelism': 'pmap', 'mesh.data': 4, 'mesh.fsdp': 2},
     r"parallelism='pmap' is data parallel only but config.mesh has fsdp=2"),
    ({'parallelism': 'pmapp'}, r"config.parallelism='pmapp' is unknown"),
])
def test_bad_layouts_are_one_config_error(overrides, message):
  config = make_config(**{'train.batch_size': 16, **overrides})
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config, num_devices=DEVICES)


def test_unknown_logical_name_in_rules():
  with pytest.raises(config_lib.ConfigError, match='did you mean config.mesh.rules.vocab'):
    make_config(**{'mesh.rules.vocabb': 'tensor'})  # on the command line: the locked config
  config = config_lib.base_config()  # in a config file, before locking
  config.mesh.rules.vocabb = 'tensor'
  with pytest.raises(config_lib.ConfigError, match='config.mesh.rules.vocabb names no logical axis'):
    config_lib.validate(config, num_devices=1)


def test_bad_mesh_fails_before_compiling(tmp_path, monkeypatch):
  from llm_jax.train import loop
  monkeypatch.setattr(jax, 'jit', lambda *a, **k: pytest.fail('compiled before the config error'))
  with pytest.raises(config_lib.ConfigError, match='data×fsdp×tensor = 2×1×1 does not fit 1 devices'):
    loop.build_trainer(make_config(**{'mesh.data': 2}), str(tmp_path))


def test_every_strategy_is_valid_on_8_devices():
  for strategy in parallel.STRATEGIES:
    config = make_config(**{'train.batch_size': 16, 'model.num_heads': 8}, **parallel.strategy_overrides(strategy))
    config_lib.validate(config, num_devices=DEVICES)
  assert parallel.strategy_overrides('fsdp_tensor') == {'mesh.data': 1, 'mesh.fsdp': -1, 'mesh.tensor': 2}


def test_one_host_does_not_start_a_distributed_job():
  assert parallel.initialize_distributed() is False
