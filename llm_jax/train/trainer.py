"""``build_trainer(config, workdir)``: the model kind, data, mesh, shardings and steps of one config.

What the training loop, the bench and the tests share: nothing is compiled until a step
first runs (``jax.jit`` is lazy). The model kind (``models.kinds``) decides the batch
layout, the loss and the metrics; this module only places and compiles them, on the
mesh (``parallelism='jit'``) or with ``jax.pmap`` (``pmap_step``).
"""

import contextlib
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from llm_jax import config as config_lib
from llm_jax import data as data_lib
from llm_jax import parallel
from llm_jax.models import kinds
from llm_jax.train import guard
from llm_jax.train import optim
from llm_jax.train import pmap_step
from llm_jax.train import step as step_lib


@dataclasses.dataclass
class Trainer:
  """Everything placed for one config (compiled on first use)."""
  config: ml_collections.ConfigDict
  dataset: Any
  model_cfg: Any
  kind: kinds.ModelKind
  mesh: jax.sharding.Mesh
  rules: Any
  state_shardings: Any
  batch_sharding: Any
  abstract_state: Any
  abstract_variables: Any
  init: Any          # jitted () -> state
  train_step: Any    # jitted (state, batch) -> (state, metrics)
  eval_step: Any     # jitted (params, batch) -> sums
  lr_schedule: Any
  flops_per_token: float
  steps: int         # the run's length: train.steps, or train.epochs over this data
  pmap: bool = False

  @property
  def model(self) -> nn.Module:
    return self.kind.module

  def context(self):
    """The mesh and logical-axis rules the steps run under (nothing for pmap: each device runs
    the whole model on its rows)."""
    stack = contextlib.ExitStack()
    if not self.pmap:
      stack.enter_context(jax.set_mesh(self.mesh))
      stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def device_batch(self, batch: dict) -> dict:
    if self.pmap:
      return pmap_step.device_batch(batch)
    return parallel.put_batch(batch, self.batch_sharding)

  def evaluate(self, params) -> dict:
    """The kind's eval metrics over ``eval.max_batches`` eval batches (all: 0), as floats."""
    sums = None
    for batch in self.dataset.eval_batches(self.config.eval.max_batches):
      out = self.eval_step(params, self.device_batch(batch))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
      return {}
    return {k: float(v) for k, v in jax.device_get(self.kind.metrics(jax.device_get(sums), 'eval_')).items()}


def make_kind(config: ml_collections.ConfigDict, vocab_size: int) -> kinds.ModelKind:
  """The model kind of ``config`` (after ``config.validate``) for a vocabulary of ``vocab_size``."""
  return kinds.build(config.model.kind, config_lib.model_config(config, vocab_size), **kind_options(config))


def kind_options(config: ml_collections.ConfigDict) -> dict:
  """The model kind's own settings from the config (``kinds.build``'s options)."""
  if config.model.kind == 'encoder':
    return {'mlm_probability': config.data.mlm_probability}
  if config.model.kind == 'encoder_decoder':
    return {'target_len': config_lib.target_len(config), 'label_smoothing': config.train.label_smoothing}
  if config.model.kind == 'decoder':
    return {'label_smoothing': config.train.label_smoothing}
  return {}


def run_steps(config: ml_collections.ConfigDict, dataset) -> int:
  """train.steps, or with train.epochs > 0 the steps that pass over the training rows that often."""
  t = config.train
  if not t.epochs:
    return t.steps
  rows = getattr(dataset, 'rows_per_epoch', None)
  if not rows or rows >= 1 << 30:  # synthetic data has no epochs
    raise config_lib.ConfigError('config.train.epochs needs a dataset with a known size; set train.steps instead.')
  steps = max(1, math.ceil(t.epochs * rows / t.batch_size))
  if t.stop_at != -1 and t.stop_at > steps:
    raise config_lib.ConfigError(f'config.train.stop_at={t.stop_at} is past the {steps} steps of '
                                 f'train.epochs={t.epochs}; lower it.')
  return steps


def build_trainer(config: ml_collections.ConfigDict, workdir: str, dataset=None) -> Trainer:
  """Validates the config, loads the data (unless given) and places everything; compiles nothing yet."""
  config_lib.validate(config, num_devices=jax.device_count())
  if dataset is None:
    dataset = data_lib.dataset_for(config, global_batch=config.train.batch_size, seed=config.seed,
                            cache_dir=data_lib.cache_dir(config, workdir),
                            process_index=jax.process_index(), process_count=jax.process_count())
  kind = make_kind(config, dataset.tokenizer.vocab_size)
  model_cfg = kind.cfg
  steps = run_steps(config, dataset)
  pmap = config.parallelism == 'pmap'
  mesh = pmap_step.make_mesh() if pmap else parallel.make_mesh(config.mesh)
  rules = parallel.rules_from_config(config.mesh.rules)
  optimizer, lr_schedule = optim.make(config.train, steps)
  b, t = config.train.batch_size, config.data.seq_len
  example = kind.schema(b, t)
  init_fn = functools.partial(step_lib.init_state, kind, optimizer, config.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract_variables = jax.eval_shape(kind.init, jax.random.key(0), example)
    abstract_state = jax.eval_shape(init_fn, example)
    shardings = (parallel.replicated(abstract_state, mesh) if pmap else
                 parallel.state_shardings(abstract_variables, optimizer, abstract_state, mesh, rules))
  batch_sharding = parallel.batch_sharding(mesh, rules)
  zeros = kind.example_batch(b, t)
  init = jax.jit(lambda: init_fn(zeros), out_shardings=shardings)
  train_fn = guard.wrap(
      step_lib.make_train_step(kind, optimizer, lr_schedule, z_loss=config.train.z_loss,
                               micro_batches=config.train.micro_batches,
                               micro_batch_mode=config.train.micro_batch_mode,
                               loss_chunk_size=config.train.loss_chunk_size,
                               dropout=model_cfg.dropout_rate > 0 or model_cfg.attention_dropout_rate > 0,
                               axis_name=pmap_step.AXIS if pmap else None),
      config.train.nonfinite)
  eval_fn = step_lib.make_eval_step(kind, loss_chunk_size=config.train.loss_chunk_size)
  if pmap:
    train_step, eval_step = pmap_step.compile_steps(train_fn, eval_fn, shardings)
  else:
    train_step = jax.jit(train_fn, in_shardings=(shardings, batch_sharding),
                         out_shardings=(shardings, None), donate_argnums=0)
    eval_step = jax.jit(eval_fn, in_shardings=(shardings.params, batch_sharding))
  placed = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state, shardings)
  return Trainer(config, dataset, model_cfg, kind, mesh, rules, shardings, batch_sharding, placed,
                 abstract_variables, init, train_step, eval_step, lr_schedule,
                 kind.flops_per_token(abstract_state.params, t), steps, pmap)
