"""``train_and_evaluate(config, workdir)``: the training loop, callable without flags.

Resumes by itself from the newest finished checkpoint in WORKDIR; otherwise starts
from ``config.init_from``'s parameters or from scratch. Batches are a pure function of
(seed, step), dropout keys of (seed, step), so a resumed run is bitwise the run that
never stopped.
"""

import contextlib
import dataclasses
import functools
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import auto as tqdm

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import data as data_lib
from llm_jax import parallel
from llm_jax import perf
from llm_jax.models import transformer
from llm_jax.train import metrics as metrics_lib
from llm_jax.train import objectives
from llm_jax.train import optim
from llm_jax.train import step as step_lib


@dataclasses.dataclass
class Trainer:
  """Everything compiled and placed for one config: what the loop, bench and tests share."""
  config: ml_collections.ConfigDict
  dataset: Any
  model_cfg: Any
  model: nn.Module
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

  def context(self):
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def device_batch(self, batch: dict) -> dict:
    return parallel.put_batch(batch, self.batch_sharding)

  def evaluate(self, params) -> dict:
    sums = None
    for batch in self.dataset.eval_batches(self.config.eval.max_batches):
      out = self.eval_step(params, self.device_batch(batch))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    loss = float(sums['nll_sum'] / max(sums['weight_sum'], 1.0))
    return dict(eval_loss=loss, eval_perplexity=float(np.exp(min(loss, 50.0))))


def build_trainer(config: ml_collections.ConfigDict, workdir: str, dataset=None) -> Trainer:
  """Validates the config, loads the data (unless given) and compiles nothing yet (jit is lazy)."""
  config_lib.validate(config, num_devices=jax.device_count())
  if dataset is None:
    dataset = data_lib.load(config.data, global_batch=config.train.batch_size, seed=config.seed,
                            cache_dir=ckpt_lib.cache_dir(config, workdir),
                            process_index=jax.process_index(), process_count=jax.process_count())
  model_cfg = config_lib.model_config(config, dataset.tokenizer.vocab_size)
  model = transformer.build(config.model.kind, model_cfg)
  mesh = parallel.make_mesh(config.mesh)
  rules = parallel.DEFAULT_RULES
  optimizer, lr_schedule = optim.make(config.train)
  b, t = config.train.batch_size, config.data.seq_len
  example = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == 'weights' else jnp.int32)
             for k in ('inputs', 'targets', 'weights', 'positions', 'segment_ids')}
  init_fn = functools.partial(step_lib.init_state, model, optimizer, config.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract_variables = jax.eval_shape(model.init, jax.random.key(0), example['inputs'],
                                        example['positions'], example['segment_ids'])
    abstract_state = jax.eval_shape(init_fn, example)
    shardings = parallel.state_shardings(abstract_variables, optimizer, abstract_state, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh)
  zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in example.items()}
  init = jax.jit(lambda: init_fn(zeros), out_shardings=shardings)
  objective = objectives.OBJECTIVE_OF_KIND[config.model.kind]
  train_step = jax.jit(
      step_lib.make_train_step(model, optimizer, lr_schedule, objective=objective,
                               z_loss=config.train.z_loss, micro_batches=config.train.micro_batches,
                               dropout=model_cfg.dropout_rate > 0 or model_cfg.attention_dropout_rate > 0),
      in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None), donate_argnums=0)
  eval_step = jax.jit(step_lib.make_eval_step(model, objective=objective),
                      in_shardings=(shardings.params, batch_sharding))
  n_matmul = transformer.matmul_params(abstract_state.params, model_cfg)
  return Trainer(config, dataset, model_cfg, model, mesh, rules, shardings, batch_sharding,
                 jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              abstract_state, shardings),
                 abstract_variables, init, train_step, eval_step, lr_schedule,
                 transformer.flops_per_token(n_matmul, model_cfg, t))


def _initial_state(trainer: Trainer, ckpts: ckpt_lib.Checkpoints) -> tuple[Any, int]:
  """(state, first step): resumed from WORKDIR, started from init_from, or fresh."""
  config = trainer.config
  latest = ckpts.latest_step()
  if latest is not None:
    state, meta = ckpts.restore(latest, trainer.abstract_state)
    logging.info('Resumed from step %d in %s', latest, ckpts.directory)
    return state, int(meta['data_position'])
  state = trainer.init()
  if config.init_from:
    other = ckpt_lib.Checkpoints(config.init_from, config.checkpoint)
    step = other.latest_step()
    if step is None:
      raise FileNotFoundError(f'config.init_from={config.init_from!r} holds no finished checkpoint.')
    params = other.restore_params(step, trainer.abstract_state.params)
    other.close()
    state = state.replace(params=params)
    logging.info('Initialized parameters from %s step %d', config.init_from, step)
  return state, 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains until train.steps (or train.stop_at), evaluating, logging and checkpointing.

  Returns the final summary (step, last train loss, last eval loss, seconds).
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir={workdir} is a file; give a directory.')
  os.makedirs(workdir, exist_ok=True)
  trainer = build_trainer(config, workdir)
  ckpt_lib.save_config(workdir, config)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint)
  start_time = time.time()
  with trainer.context():
    state, first = _initial_state(trainer, ckpts)
    last = config.train.stop_at if config.train.stop_at != -1 else config.train.steps
    writer = metrics_lib.MetricsWriter(workdir, resume_step=first)
    summary = _run(trainer, state, first, last, ckpts, writer)
    params = summary.pop('_params')
  ckpts.wait()
  ckpts.close()
  writer.close()
  summary['seconds'] = round(time.time() - start_time, 1)
  logging.info('Finished: %s', summary)
  print(f'[llm_jax] done: step {summary["step"]}, train_loss {summary.get("train_loss")}, '
        f'eval_loss {summary.get("eval_loss")}, {summary["seconds"]} s, workdir {workdir}', flush=True)
  if config.sample.prompt and jax.process_index() == 0:
    from llm_jax import sample
    s = config.sample
    text = sample.sample_text(trainer.model_cfg, jax.device_get(params),
                              trainer.dataset.tokenizer, s.prompt, max_new_tokens=s.max_new_tokens,
                              temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=config.seed)[0]
    print(f'[llm_jax] sample:\n{text}', flush=True)
  return summary


def _run(trainer: Trainer, state, first: int, last: int, ckpts, writer) -> dict:
  config = trainer.config
  tokens_per_step = config.train.batch_size * config.data.seq_len
  peak, _ = perf.peak_flops(config.model.dtype)
  batches = data_lib.prefetch(trainer.device_batch(trainer.dataset.train_batch(s))
                              for s in range(first, last))
  summary: dict = {'step': first}
  bar = tqdm.tqdm(total=last, initial=first, desc='train', disable=jax.process_index() != 0,
                  mininterval=2.0, dynamic_ncols=True)
  timer_step, timer = first, None
  for step in range(first + 1, last + 1):
    state, metrics = trainer.train_step(state, next(batches))
    bar.update(1)
    if timer is None:  # the first step compiles; time from its end
      jax.block_until_ready(metrics)
      timer_step, timer = step, time.perf_counter()
    record = {}
    if step % config.log_every_steps == 0 or step == last:
      record = {k: float(v) for k, v in jax.device_get(metrics).items()}
      record.pop('target_tokens')
      record['perplexity'] = float(np.exp(min(record['train_loss'], 50.0)))
      if step > timer_step:
        rate = (step - timer_step) * tokens_per_step / (time.perf_counter() - timer)
        record.update(tokens_per_sec=rate, mfu=rate * trainer.flops_per_token / (peak * jax.device_count()))
        timer_step, timer = step, time.perf_counter()
      bar.set_postfix(loss=f'{record["train_loss"]:.4f}')
    every = config.eval.every_steps
    if config.data.eval_split and ((every and step % every == 0) or step == last):
      record.update(trainer.evaluate(state.params))
      tqdm.tqdm.write(f'step {step}: eval_loss {record["eval_loss"]:.4f}')
      if timer is not None:
        timer = time.perf_counter()
    if record:
      writer.write(step, record)
      summary.update(record)
    if step % config.checkpoint.every_steps == 0 or step == last:
      ckpts.save(step, state, {'data_position': step, 'model_kind': config.model.kind})
  bar.close()
  summary['step'] = last
  summary['_params'] = state.params
  return summary
