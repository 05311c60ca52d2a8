"""The embedded corpus as the TFDS dataset ``python_docs/<CONFIG_NAME>`` (needs the ``[tfds]`` extra).

Importing this module registers the builder, so ``tfds.builder('python_docs')`` finds
it; it yields the same texts in the same order as ``embedded.documents``, which is
what training reads (without TensorFlow).
"""

import sys

import tensorflow_datasets as tfds

from llm_jax.data import embedded
from llm_jax.data.embedded import CONFIG_NAME, SPLITS, split_documents


class PythonDocs(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the embedded corpus: features 'name' and 'text'; splits
  'train' and 'validation'; order preserved (shuffling disabled)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'pydoc topics and stdlib docstrings.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name=CONFIG_NAME, description=f'The documentation of CPython {sys.version.split()[0]}.')]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=embedded.__doc__,
        features=tfds.features.FeaturesDict({
            'name': tfds.features.Text(), 'text': tfds.features.Text()}),
        disable_shuffling=True,
        homepage='https://docs.python.org/3/')

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for name, text in split_documents(split):
      yield name, {'name': name, 'text': text}
