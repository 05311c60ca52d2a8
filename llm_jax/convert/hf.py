"""A Hugging Face model directory on disk: its ``config.json`` and its weights, read and written.

Reading: ``read_config(directory)`` is config.json as a dict; ``open_weights(directory)``
is a lazy ``Weights`` over whichever file the directory holds, in this order:

  model.safetensors                                  one file
  model.safetensors.index.json + the shards it names  sharded safetensors
  pytorch_model.bin (or its .index.json + shards)     only where torch is importable

``Weights.shape(key)`` reads the header only; ``Weights.get(key)`` one tensor as a NumPy
array (bfloat16 and float16 come back as float32). Nothing else in llm_jax reads these
formats, and nothing here knows an architecture (that is ``table`` and its families).

Writing: ``write(directory, config, tensors)`` puts config.json and model.safetensors
(metadata format 'pt', which ``transformers`` requires) into ``directory``.

Every problem a user can cause (no config.json, no weights, a shard that is missing, a
.bin file without torch) is one ``errors.ConfigError`` line naming the file and the fix.
"""

import json
import os
from typing import Callable

import numpy as np

from llm_jax import errors

CONFIG_FILE = 'config.json'
SAFETENSORS = 'model.safetensors'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
TORCH_BIN = 'pytorch_model.bin'
TORCH_INDEX = 'pytorch_model.bin.index.json'
_NUMPY_DTYPES = ('F64', 'F32', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL')  # safetensors' numpy reader takes these


def read_config(directory: str) -> dict:
  """config.json of a model directory, as a dict."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise errors.ConfigError(f'{directory} has no {CONFIG_FILE}: a Hugging Face model directory holds '
                             f'{CONFIG_FILE} and its weights ({SAFETENSORS} or {TORCH_BIN}); give such a directory.')
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.ConfigError(f'{path} is not valid JSON ({e}); re-download the model.') from None
  if not isinstance(config, dict):
    raise errors.ConfigError(f'{path} holds no JSON object; re-download the model.')
  return config


class Weights:
  """Named tensors of one or more files, read one at a time.

  ``files`` maps every key to the file holding it; ``reader(file)`` opens a file and
  returns (shape_of(key), get(key)).
  """

  def __init__(self, files: dict[str, str], reader: Callable[[str], tuple], description: str):
    self.files = files
    self.description = description  # for messages: 'DIR/model.safetensors'
    self._reader = reader
    self._open: dict[str, tuple] = {}

  def keys(self) -> list[str]:
    return sorted(self.files)

  def _file(self, key: str):
    path = self.files[key]
    if path not in self._open:
      self._open[path] = self._reader(path)
    return self._open[path]

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._file(key)[0](key))

  def get(self, key: str) -> np.ndarray:
    array = np.asarray(self._file(key)[1](key))
    return array.astype(np.float32) if array.dtype.kind == 'f' and array.dtype.itemsize < 4 else array


def _safetensors_reader(path: str):
  """(shape_of, get) of one safetensors file; dtypes NumPy lacks (bfloat16, float8) go through
  safetensors' JAX reader."""
  from safetensors import safe_open
  try:
    handle = safe_open(path, framework='np')
  except Exception as e:  # pylint: disable=broad-except  (a truncated or foreign file)
    raise errors.ConfigError(f'{path} cannot be read as safetensors ({type(e).__name__}: '
                             f'{str(e).splitlines()[0][:200]}); re-download the model.') from None
  other = []

  def get(key):
    if handle.get_slice(key).get_dtype() in _NUMPY_DTYPES:
      return handle.get_tensor(key)
    if not other:
      other.append(safe_open(path, framework='flax'))
    return np.asarray(other[0].get_tensor(key).astype('float32'))

  return (lambda key: handle.get_slice(key).get_shape()), get


def _torch_state(path: str) -> dict:
  """A PyTorch pickle's tensors, loaded whole (weights only) on the CPU."""
  import torch
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(f'{path} cannot be read by torch.load ({type(e).__name__}: '
                             f'{str(e).splitlines()[0][:200]}); re-download the model.') from None


def _torch_reader(state: dict):
  """(shape_of, get) of a loaded PyTorch state dict."""
  get = lambda key: (state[key].float() if state[key].is_floating_point() else state[key]).numpy()
  return (lambda key: tuple(state[key].shape)), get


def _safetensors_keys(path: str) -> list[str]:
  from safetensors import safe_open
  try:
    with safe_open(path, framework='np') as f:
      return list(f.keys())
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(f'{path} cannot be read as safetensors ({type(e).__name__}: '
                             f'{str(e).splitlines()[0][:200]}); re-download the model.') from None


def _sharded(directory: str, index_name: str) -> dict[str, str]:
  """{key: shard path} from an index file; every shard it names must exist."""
  index = os.path.join(directory, index_name)
  try:
    with open(index, encoding='utf-8') as f:
      weight_map = json.load(f)['weight_map']
  except (ValueError, KeyError, TypeError) as e:
    raise errors.ConfigError(f'{index} is not a weights index (JSON with a weight_map: {e}); re-download '
                             'the model.') from None
  missing = sorted({s for s in weight_map.values() if not os.path.isfile(os.path.join(directory, s))})
  if missing:
    raise errors.ConfigError(f'{index} names shards that are not in {directory}: {", ".join(missing[:5])}'
                             f'{" ..." if len(missing) > 5 else ""}; download every shard.')
  return {key: os.path.join(directory, shard) for key, shard in weight_map.items()}


def open_weights(directory: str) -> Weights:
  """The directory's weights, safetensors first (see the module docstring)."""
  single = os.path.join(directory, SAFETENSORS)
  if os.path.isfile(single):
    return Weights({k: single for k in _safetensors_keys(single)}, _safetensors_reader, single)
  if os.path.isfile(os.path.join(directory, SAFETENSORS_INDEX)):
    files = _sharded(directory, SAFETENSORS_INDEX)
    return Weights(files, _safetensors_reader, os.path.join(directory, SAFETENSORS_INDEX))
  for name in (TORCH_BIN, TORCH_INDEX):
    if os.path.isfile(os.path.join(directory, name)):
      try:
        import torch  # noqa: F401  pylint: disable=unused-import
      except ImportError:
        raise errors.ConfigError(
            f'{directory} holds its weights as {name} (a PyTorch pickle) and torch is not installed: convert it '
            f'to {SAFETENSORS} (transformers: from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)) '
            'or pip install torch.') from None
      if name == TORCH_BIN:
        path = os.path.join(directory, name)
        state = _torch_state(path)
        return Weights({key: path for key in state}, lambda _: _torch_reader(state), path)
      return Weights(_sharded(directory, TORCH_INDEX), lambda p: _torch_reader(_torch_state(p)),
                     os.path.join(directory, TORCH_INDEX))
  raise errors.ConfigError(f'{directory} holds no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} with '
                           f'its shards, or {TORCH_BIN}; download the model\'s weights into it.')


def write(directory: str, config: dict, tensors: dict[str, np.ndarray]) -> None:
  """config.json and model.safetensors of ``tensors`` (contiguous float32 copies) into ``directory``."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write('\n')
  arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
  save_file(arrays, os.path.join(directory, SAFETENSORS), metadata={'format': 'pt'})
