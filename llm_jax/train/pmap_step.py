"""The ``jax.pmap`` data-parallel path (``config.parallelism='pmap'``).

For users who want classic pmap: every device holds the whole train state, takes
B/n rows of the batch, and the gradient and loss sums are all-reduced over ``AXIS``
inside the step (``step.make_train_step(axis_name=AXIS)``) before the optimizer, so
the losses are those of the jit path.

The state stays an ordinary global ``jax.Array`` tree, replicated
(``NamedSharding(mesh, P())``) and passed with ``in_axes=None``/``out_axes=None``: no
leading device axis, so checkpoints, evaluation and sampling see the same state as on
the jit path, and a run saved under one path resumes under the other.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llm_jax import parallel

AXIS = 'batch'


def make_mesh() -> Mesh:
  """All devices on 'data', in ``jax.devices()`` order: the order pmap maps over."""
  return Mesh(np.asarray(jax.devices()).reshape(-1, 1, 1), parallel.MESH_AXES)


def compile_steps(train_fn, eval_fn, state_shardings):
  """pmapped (state, batch) -> (state, metrics) and (params, batch) -> sums, on global state."""
  p_train = jax.pmap(train_fn, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, None), donate_argnums=0)
  p_eval = jax.pmap(lambda params, batch: jax.lax.psum(eval_fn(params, batch), AXIS),
                    axis_name=AXIS, in_axes=(None, 0), out_axes=None)

  def train_step(state, batch):
    state, metrics = p_train(state, batch)
    return _as_global(state, state_shardings), metrics

  return train_step, p_eval


def _as_global(tree, shardings):
  """With several processes pmap returns each process's local copy; rewrap as global arrays."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(
      lambda x, s: jax.make_array_from_single_device_arrays(x.shape, s, [d.data for d in x.addressable_shards])
      if x.is_fully_addressable else x, tree, shardings)


def device_batch(batch: dict) -> dict:
  """This process's rows on its local devices, with a leading device axis (pmap's in_axes=0)."""
  devices = jax.local_devices()
  sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
  return {k: jax.device_put(np.asarray(v).reshape(len(devices), -1, *np.shape(v)[1:]), sharding)
          for k, v in batch.items()}
