"""Device mesh, logical-axis rules, the shardings of state and batches, multi-host start.

The model names every axis logically (``llm_jax.models.axes``); ``config.mesh.rules``
(default ``DEFAULT_RULES``) maps those names to the mesh axes ``('data', 'fsdp',
'tensor')``. The same code runs on one CPU (a 1×1×1 mesh), 8 GPUs and a pod slice:
only ``config.mesh`` changes. A strategy is a choice of axis sizes (``STRATEGIES``):

  data     --config.mesh.data=-1                        batch split, state replicated
  fsdp     --config.mesh.data=1 --config.mesh.fsdp=-1   batch and 'embed' of every weight
                                                        split; gathered per layer
  tensor   --config.mesh.data=1 --config.mesh.tensor=-1 heads / MLP hidden / vocab split
  and their products (data×fsdp, fsdp×tensor, data×fsdp×tensor).

A dimension whose size the mesh axes of its rule do not divide is a ``ValueError``
before compiling for every model dimension the config sets (``validate``). The one
exception is the vocabulary, fixed by the tokenizer: a vocab dimension that does not
divide is left unsharded (replicated along that dimension) with a logged warning,
rather than padding the vocabulary, which would change the model.
"""

import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llm_jax import errors
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
    (axes.TOKEN_TYPE, None),
    (axes.RELATIVE, None),
)

# Ready strategies: config.mesh overrides (-1 takes the devices left over). The sizes
# 2 are what 8 devices split into; on a bigger slice raise them (see docs/parallelism.md).
STRATEGIES: dict[str, dict[str, int]] = {
    'data': dict(data=-1, fsdp=1, tensor=1),
    'fsdp': dict(data=1, fsdp=-1, tensor=1),
    'tensor': dict(data=1, fsdp=1, tensor=-1),
    'data_fsdp': dict(data=2, fsdp=-1, tensor=1),
    'fsdp_tensor': dict(data=1, fsdp=-1, tensor=2),
    'data_fsdp_tensor': dict(data=2, fsdp=-1, tensor=2),
}

# Which config key sets the size of each logical parameter axis (for the divisibility
# check); the vocabulary comes from the tokenizer and is handled by replication.
_DIM_KEYS = {
    axes.EMBED: 'model.emb_dim', axes.MLP: 'model.mlp_dim', axes.HEADS: 'model.num_heads',
    axes.KV_HEADS: 'model.num_kv_heads', axes.KV: 'model.head_dim',
    axes.POSITION: 'model.max_len', axes.LAYERS: 'model.num_layers',
}


def strategy_overrides(name: str) -> dict[str, int]:
  """Dotted overrides of strategy ``name``, for ``config.from_file(path, **overrides)``."""
  if name not in STRATEGIES:
    raise ValueError(f'strategy {name!r} is unknown; choose one of {", ".join(STRATEGIES)}.')
  return {f'mesh.{k}': v for k, v in STRATEGIES[name].items()}


# ----------------------------------------------------------------------------- rules

def rules_to_config(rules) -> dict[str, str]:
  """``{logical name: 'axis[,axis]'}`` ('' = replicated): the form config.mesh.rules holds."""
  def text(mesh_axes):
    if mesh_axes is None:
      return ''
    return mesh_axes if isinstance(mesh_axes, str) else ','.join(mesh_axes)
  return {name: text(mesh_axes) for name, mesh_axes in rules}


def rules_from_config(rules_cfg) -> tuple[tuple[str, Any], ...]:
  """Flax logical-axis rules from config.mesh.rules; ValueError for an unknown or missing name/axis."""
  given = dict(rules_cfg.items()) if hasattr(rules_cfg, 'items') else dict(rules_cfg)
  unknown = sorted(set(given) - set(axes.ALL_AXES))
  if unknown:
    raise ValueError(f'config.mesh.rules.{unknown[0]} names no logical axis; the logical axes are '
                     f'{", ".join(axes.ALL_AXES)}.')
  missing = [name for name in axes.ALL_AXES if name not in given]
  if missing:
    raise ValueError(f'config.mesh.rules has no rule for {", ".join(missing)}; give each one '
                     f"(a mesh axis, 'data,fsdp', or '' to replicate).")
  rules = []
  for name in axes.ALL_AXES:
    value = given[name]
    parts = [] if value in (None, '', 'none', 'None') else [p.strip() for p in str(value).split(',')]
    for part in parts:
      if part not in MESH_AXES:
        raise ValueError(f'config.mesh.rules.{name}={value!r} names mesh axis {part!r}, which does not exist; '
                         f"use {', '.join(MESH_AXES)} (comma-separated) or '' to replicate.")
    if len(set(parts)) != len(parts):
      raise ValueError(f'config.mesh.rules.{name}={value!r} uses a mesh axis twice; name each axis once.')
    rules.append((name, None if not parts else parts[0] if len(parts) == 1 else tuple(parts)))
  return tuple(rules)


def _axes_of(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def rule_size(rules, name: str, sizes: dict) -> int:
  """How many ways the rule of logical axis ``name`` splits a dimension on a mesh of ``sizes``."""
  return math.prod(sizes[a] for a in _axes_of(dict(rules)[name]))


# ----------------------------------------------------------------------------- mesh

def dcn_shape(mesh_cfg) -> tuple[int, int, int]:
  """Across-slice (DCN) sizes (data, fsdp, tensor); (1, 1, 1) on one slice or host group."""
  return (mesh_cfg.dcn_data, mesh_cfg.dcn_fsdp, 1)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Total axis sizes (data, fsdp, tensor): in-slice sizes (one may be -1) times DCN sizes."""
  dcn = dcn_shape(mesh_cfg)
  if any(s < 1 for s in dcn) or num_devices % math.prod(dcn):
    raise ValueError(f'config.mesh.dcn_data×dcn_fsdp = {dcn[0]}×{dcn[1]} slices does not divide the '
                     f'{num_devices} devices; use positive sizes whose product is the number of slices.')
  per_slice = num_devices // math.prod(dcn)
  sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  shown = '×'.join(map(str, sizes))
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh data×fsdp×tensor = {shown} sets {sizes.count(-1)} axes to -1; '
                     f'at most one may take the devices left over.')
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or per_slice % known:
    raise ValueError(f'config.mesh data×fsdp×tensor = {shown} does not fit {per_slice} devices; '
                     f'make the product {per_slice} (or set one axis to -1).')
  sizes = [per_slice // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != per_slice:
    raise ValueError(f'config.mesh data×fsdp×tensor = {"×".join(map(str, sizes))} = {math.prod(sizes)} '
                     f'but there are {per_slice} devices{" per slice" if per_slice != num_devices else ""}; '
                     f'make the product {per_slice} (or set one axis to -1).')
  return tuple(s * d for s, d in zip(sizes, dcn))


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh, topology-aware (``mesh_utils``).

  With DCN sizes > 1 it is a hybrid mesh: ``create_hybrid_device_mesh`` keeps the
  in-slice axes on the fast interconnect and splits data/fsdp across slices (TPU
  ``slice_index``; processes stand in for slices where there is only one, as on GPU/CPU hosts).
  """
  devices = list(devices if devices is not None else jax.devices())
  total = mesh_shape(mesh_cfg, len(devices))
  dcn = dcn_shape(mesh_cfg)
  if math.prod(dcn) > 1:
    ici = tuple(t // d for t, d in zip(total, dcn))
    by_process = len({getattr(d, 'slice_index', 0) for d in devices}) == 1  # one slice (or none): processes
    granules = len({getattr(d, 'process_index' if by_process else 'slice_index') for d in devices})
    if granules != math.prod(dcn):
      raise ValueError(f'config.mesh.dcn_data×dcn_fsdp = {dcn[0]}×{dcn[1]} but the devices form {granules} '
                       f'{"processes" if by_process else "slices"}; make the product {granules}.')
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process,
                                                allow_split_physical_axes=True)
  else:
    grid = mesh_utils.create_device_mesh(total, devices=devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES)


# ----------------------------------------------------------------------------- validation

def validate(config, num_devices: int) -> None:
  """ValueError (one line naming the numbers) for a layout that cannot run, before compiling.

  Checks the rules, the mesh against the device count, the batch against the axes that
  split it, and every model dimension the config sets against the axes its rule uses.
  """
  rules = rules_from_config(config.mesh.rules)
  data, fsdp, tensor = mesh_shape(config.mesh, num_devices)
  sizes = dict(data=data, fsdp=fsdp, tensor=tensor)
  t, m = config.train, config.model
  per_micro = t.batch_size // t.micro_batches
  if config.parallelism == 'pmap':
    if fsdp * tensor != 1:
      raise ValueError(f"config.parallelism='pmap' is data parallel only but config.mesh has fsdp={fsdp}, "
                       f"tensor={tensor}; set them to 1 or use parallelism='jit'.")
    split, what = num_devices, f'{num_devices} devices'
  else:
    batch_axes = _axes_of(dict(rules)[axes.ACT_BATCH])
    split = rule_size(rules, axes.ACT_BATCH, sizes)
    what = ('×'.join(f'{a}={sizes[a]}' for a in batch_axes) or 'no mesh axis') + f' = {split}-way'
  if per_micro % split:
    raise ValueError(f'config.train.batch_size={t.batch_size} gives micro-batches of {per_micro} rows, '
                     f'not divisible by the {what} batch split; use a multiple of {split * t.micro_batches}.')
  if config.parallelism == 'pmap':
    return
  dims = {
      axes.EMBED: m.emb_dim,
      axes.HEADS: m.num_heads,
      axes.KV_HEADS: m.num_heads if m.num_kv_heads == -1 else m.num_kv_heads,
      axes.KV: m.head_dim if m.head_dim != -1 else m.emb_dim // m.num_heads,
      axes.MLP: m.mlp_dim if m.mlp_dim != -1 else 4 * m.emb_dim,
  }
  if m.pos_encoding == 'learned':
    dims[axes.POSITION] = m.max_len if m.max_len != -1 else config.data.seq_len
  if m.scan_layers:
    dims[axes.LAYERS] = m.num_layers
  for name, size in dims.items():
    ways = rule_size(rules, name, sizes)
    if size % ways:
      mesh_axes = _axes_of(dict(rules)[name])
      shown = '×'.join(f'config.mesh.{a}={sizes[a]}' for a in mesh_axes)
      raise ValueError(f'config.{_DIM_KEYS[name]}={size} is not divisible by the {ways}-way split of '
                       f"'{name}' ({shown}, rule {name} -> {','.join(mesh_axes)}); make it a multiple "
                       f'of {ways} or shrink {"/".join(f"config.mesh.{a}" for a in mesh_axes)}.')


# ----------------------------------------------------------------------------- shardings

def param_specs(abstract_variables, rules, sizes: dict) -> tuple[Any, list[str]]:
  """(PartitionSpec per parameter, notes on dimensions left unsharded) on a mesh of ``sizes``.

  ``abstract_variables`` are boxed (``jax.eval_shape(model.init, ...)``). A logical name
  without a rule is a ValueError (never a silent replication). A dimension its mesh
  axes do not divide (the vocabulary, see the module docstring) is left unsharded and
  reported in the notes.
  """
  params = abstract_variables['params']
  logical = nn.get_partition_spec(params)
  shapes = jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, params,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  ruled = {name for name, _ in rules}
  notes = []

  def one(path, names, shape):
    names = tuple(names)
    if len(names) != len(shape.shape):
      raise ValueError(f'parameter {_path(path)} of shape {shape.shape} carries logical names {names}; '
                       f'create it with nn.with_logical_partitioning, one name per dimension.')
    for name in names:
      if name is not None and name not in ruled:
        raise ValueError(f'parameter {_path(path)} has logical axis {name!r} with no rule in '
                         f'config.mesh.rules; add one.')
    mesh_axes = list(nn.logical_to_mesh_axes(names, rules)) if names else []
    for i, ax in enumerate(mesh_axes):
      wanted = [a for a in _axes_of(dict(rules).get(names[i])) if sizes[a] > 1]
      if wanted and ax is None:  # flax gives a mesh axis to one dimension of an array only
        notes.append(f'{_path(path)} dim {i} ({names[i]}) wants {",".join(wanted)}, which another dimension '
                     f'of it already uses: left unsharded')
      used = tuple(a for a in _axes_of(ax) if sizes[a] > 1)  # size-1 axes split nothing
      ways = math.prod(sizes[a] for a in used)
      mesh_axes[i] = None if not used else used[0] if len(used) == 1 else used
      if shape.shape[i] % ways:
        notes.append(f'{_path(path)} dim {i} ({names[i]}={shape.shape[i]}) is not divisible by '
                     f'{"×".join(used)}={ways}: left unsharded')
        mesh_axes[i] = None
    return P(*mesh_axes)

  specs = jax.tree_util.tree_map_with_path(one, logical, shapes, is_leaf=lambda x: isinstance(x, P))
  return specs, notes


def _path(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def state_shardings(abstract_variables, optimizer: optax.GradientTransformation, abstract_state,
                    mesh: Mesh, rules) -> Any:
  """NamedShardings of a TrainState from the logical names on the boxed parameters.

  ``abstract_variables`` is ``jax.eval_shape(model.init, ...)`` (boxed); optimizer
  slots that mirror parameters (Adam's mu, nu) take their parameter's sharding; scalar
  state (counts, step, rng) is replicated.
  """
  specs, notes = param_specs(abstract_variables, rules, dict(mesh.shape))
  for note in notes:
    logging.warning('sharding: %s', note)
  opt_specs = optax.tree_map_params(
      optimizer, lambda _, spec: spec, abstract_state.opt_state, specs,
      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
  tree = abstract_state.replace(step=P(), params=specs, opt_state=opt_specs, rng=P())
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree, is_leaf=lambda x: isinstance(x, P))


def replicated(tree, mesh: Mesh) -> Any:
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """Rows split over the mesh axes of the 'act_batch' rule (data×fsdp by default).

  Process p loads rows [p·B/P, (p+1)·B/P) of every global batch (``data.pipeline``), so
  the devices of process p must hold exactly those rows; a ConfigError says otherwise
  (e.g. a batch split fewer ways than there are processes).
  """
  sharding = NamedSharding(mesh, P(dict(rules)[axes.ACT_BATCH]))
  processes = jax.process_count()
  if processes > 1:
    ways = rule_size(rules, axes.ACT_BATCH, dict(mesh.shape))
    blocks: dict = {}
    for device, index in sharding.devices_indices_map((ways,)).items():
      blocks.setdefault(device.process_index, set()).add(index[0].start or 0)
    if ways % processes or any(rows != set(range(p * ways // processes, (p + 1) * ways // processes))
                               for p, rows in blocks.items()):
      raise errors.ConfigError(
          f'the batch is split {ways} ways ({dict(rules)[axes.ACT_BATCH]} of mesh {dict(mesh.shape)}) over '
          f'{processes} processes, but each process must hold its own contiguous rows; make the batch '
          f'axes a multiple of {processes} with the other axes inside a host (or use config.mesh.dcn_data).')
  return sharding


def device_memory_bytes() -> int | None:
  """Memory one device can hold: an accelerator's allocator limit; for CPU devices the host's
  physical memory shared among this process's devices. None where it cannot be told."""
  device = jax.local_devices()[0]
  if device.platform == 'cpu':
    try:
      total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
      return None
    return total // jax.local_device_count()
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (a backend without memory stats)
    return None
  return stats.get('bytes_limit')


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
  """Places this process's slice of the global batch on the mesh as one global array."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def per_device_bytes(tree) -> int:
  """Bytes the largest-loaded device holds of ``tree`` (its arrays' addressable shards)."""
  used: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      used[shard.device] = used.get(shard.device, 0) + shard.data.nbytes
  return max(used.values(), default=0)


# ----------------------------------------------------------------------------- multi-host

_AUTO_CLUSTERS = ('GceTpuCluster', 'GkeTpuCluster', 'SlurmCluster', 'OmpiCluster')


def _cluster_detected() -> bool:
  """A Cloud TPU pod slice (or a SLURM / Open MPI job) that jax can configure by itself."""
  try:
    from jax._src import clusters
    return any(c.__name__ in _AUTO_CLUSTERS and c.is_env_present() for c in clusters.ClusterEnv._cluster_types)
  except (ImportError, AttributeError):  # private API moved: fall back to the environment
    return any(k in os.environ for k in ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                                         'SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE'))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins the multi-process job (``jax.distributed.initialize``); returns whether it did.

  Explicit arguments (``--coordinator_address``, ``--num_processes``, ``--process_id``)
  start it anywhere, e.g. 2 CPU processes on 127.0.0.1; without them it starts only
  where jax detects the cluster by itself (every worker of a Cloud TPU pod slice,
  SLURM, Open MPI). Must run before anything touches a device.
  """
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if not explicit and not _cluster_detected():
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU collectives across processes
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  logging.info('process %d of %d, %d local of %d devices', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
