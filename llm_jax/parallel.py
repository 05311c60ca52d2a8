"""Device mesh, logical-axis rules and the shardings of the train state and batches.

The model names every axis logically (``llm_jax.models.axes``); ``DEFAULT_RULES`` maps
those names to the mesh axes ``('data', 'fsdp', 'tensor')``. The same code runs on one
CPU (a 1×1×1 mesh) and on a pod slice: only ``config.mesh`` changes.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llm_jax.models import axes

MESH_AXES = ('data', 'fsdp', 'tensor')

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    (axes.ACT_BATCH, ('data', 'fsdp')),
    (axes.ACT_LEN, None),
    (axes.ACT_EMBED, None),
    (axes.ACT_HEADS, 'tensor'),
    (axes.ACT_KV, None),
    (axes.ACT_MLP, 'tensor'),
    (axes.ACT_VOCAB, 'tensor'),
    (axes.VOCAB, 'tensor'),
    (axes.EMBED, 'fsdp'),
    (axes.MLP, 'tensor'),
    (axes.HEADS, 'tensor'),
    (axes.KV_HEADS, 'tensor'),
    (axes.KV, None),
    (axes.LAYERS, None),
    (axes.POSITION, None),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Axis sizes (data, fsdp, tensor); one size of -1 takes the remaining devices."""
  sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh has {sizes.count(-1)} axes set to -1; at most one may take the rest.')
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ValueError(f'config.mesh data×fsdp×tensor = {"×".join(map(str, sizes))} does not fit '
                     f'{num_devices} devices; make the product {num_devices} (or use -1 on one axis).')
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(f'config.mesh data×fsdp×tensor = {"×".join(map(str, sizes))} = {math.prod(sizes)} '
                     f'but there are {num_devices} devices; make the product {num_devices}.')
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(mesh_utils.create_device_mesh(shape, devices=devices), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(('data', 'fsdp')))


def state_shardings(abstract_variables, optimizer: optax.GradientTransformation, abstract_state,
                    mesh: Mesh, rules) -> Any:
  """NamedShardings of a TrainState from the logical names on the boxed parameters.

  ``abstract_variables`` is ``jax.eval_shape(model.init, ...)`` (boxed); optimizer
  slots that mirror parameters (Adam's mu, nu) take their parameter's sharding; scalar
  state (counts, step, rng) is replicated.
  """
  param_specs = nn.get_partition_spec(abstract_variables)['params']
  opt_specs = optax.tree_map_params(
      optimizer, lambda _, spec: spec, abstract_state.opt_state, param_specs,
      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
  specs = abstract_state.replace(step=P(), params=param_specs, opt_state=opt_specs, rng=P())
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
  """Places this process's slice of the global batch on the mesh as one global array."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
