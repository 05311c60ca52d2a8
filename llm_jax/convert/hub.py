"""Where a Hugging Face model's files are: a local directory, or a Hub id downloaded once.

``resolve('bert-base-uncased')`` returns a local directory holding the model's
``config.json``, weights and tokenizer files. A directory is used as it is; any other
name is a Hub id, fetched with ``huggingface_hub`` (its own cache) where the machine
reaches the Hub. Offline, or without ``huggingface_hub``, the error is one line saying
to pass a local directory (``errors.ConfigError``): it comes at once, without the
library's retries, when ``huggingface.co`` does not resolve.
"""

import os

from llm_jax import errors

HUB_HOST = 'huggingface.co'
# The files a model directory needs: its config, weights (safetensors first) and tokenizer.
PATTERNS = ('config.json', '*.safetensors', '*.safetensors.index.json', 'pytorch_model.bin', 'vocab.txt',
            'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'merges.txt', 'vocab.json',
            'tokenizer.model', 'generation_config.json')


def resolve(source: str, what: str = 'config.init_from') -> str:
  """The local directory of ``source`` (a directory, or a Hub id downloaded into the Hub cache)."""
  if os.path.isdir(source):
    return source
  from llm_jax.data import sources  # its offline probe
  try:
    import huggingface_hub
  except ImportError:
    raise errors.ConfigError(f'{what}={source!r} is not a local directory, and huggingface_hub is not installed '
                             f'to fetch it from the Hub: pip install huggingface_hub, or pass the model\'s '
                             f'directory.') from None
  if sources.looks_offline(HUB_HOST):
    raise errors.ConfigError(f'{what}={source!r} is not a local directory, and the Hugging Face Hub cannot be '
                             f'reached from this machine ({HUB_HOST} does not resolve): download the model '
                             f'elsewhere (config.json, the weights and tokenizer files) and pass its directory.')
  try:
    return huggingface_hub.snapshot_download(source, allow_patterns=list(PATTERNS))
  except Exception as e:  # pylint: disable=broad-except  (not found, gated, a network error)
    raise errors.ConfigError(f'{what}={source!r}: the Hub could not provide it ({type(e).__name__}: '
                             f'{str(e).splitlines()[0][:300]}); check the id, or pass a local directory.') from None
