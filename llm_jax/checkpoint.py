"""Orbax checkpoints of a run: save, resume, and load for inference or ``init_from``.

Layout of a workdir::

  WORKDIR/config.json              the run's config (written at start)
  WORKDIR/data/                    tokenizer and token cache
  WORKDIR/checkpoints/<step>/      params | train (step, opt_state, rng) | meta (JSON)

Parameters are their own item so inference and ``init_from`` restore them without the
optimizer. ``meta`` holds the data position (the next batch index; the pipeline is a
pure function of it) and the model kind, checked on restore.
"""

import json
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

ITEMS = ('params', 'train', 'meta')


class Checkpoints:
  """A thin owner of one ``ocp.CheckpointManager`` for WORKDIR/checkpoints."""

  def __init__(self, workdir: str, ckpt_cfg: ml_collections.ConfigDict):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.max_to_keep,
        enable_async_checkpointing=ckpt_cfg.async_save,
        cleanup_tmp_directories=True,
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> bool:
    """Starts a (possibly asynchronous) save of ``state`` after ``step`` updates."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        train=ocp.args.StandardSave(dict(step=state.step, opt_state=state.opt_state, rng=state.rng)),
        meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, force=True)

  def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
    """Restores the full train state onto the shardings carried by ``abstract_state``."""
    a = abstract_state
    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(a.params),
        train=ocp.args.StandardRestore(dict(step=a.step, opt_state=a.opt_state, rng=a.rng)),
        meta=ocp.args.JsonRestore())
    out = self.manager.restore(step, args=args)
    train = out['train']
    state = a.replace(step=train['step'], params=out['params'], opt_state=train['opt_state'], rng=train['rng'])
    return state, dict(out['meta'])

  def restore_params(self, step: int, abstract_params) -> Any:
    args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
    return self.manager.restore(step, args=args)['params']

  def read_meta(self, step: int) -> dict:
    return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir!r} is not a training workdir '
                            f'(train one with python -m llm_jax.main --workdir={workdir}).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.data.cache_dir or os.path.join(workdir, 'data')


def load_for_inference(workdir: str, step: Optional[int] = None):
  """(config, model_cfg, params, tokenizer) of a trained run, on the default device."""
  from llm_jax import config as config_lib
  from llm_jax.data import load_tokenizer
  from llm_jax.models import transformer

  config = load_config(workdir)
  tokenizer = load_tokenizer(cache_dir(config, workdir))
  model_cfg = config_lib.model_config(config, tokenizer.vocab_size)
  model = transformer.build(config.model.kind, model_cfg)
  ckpts = Checkpoints(workdir, config.checkpoint)
  try:
    step = ckpts.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no finished checkpoint in {ckpts.directory}; train longer or wait for the save.')
    params = ckpts.restore_params(step, abstract_params(model, model_cfg))
  finally:
    ckpts.close()
  return config, model_cfg, params, tokenizer


def abstract_params(model, model_cfg, sharding=None):
  """ShapeDtypeStructs of the model's (unboxed) params, placed on ``sharding`` (default device)."""
  import flax.linen as nn
  import jax.numpy as jnp
  x = jnp.zeros((1, model_cfg.max_len), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x)['params'])
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
