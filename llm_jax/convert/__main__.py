r"""Writes a training run as a Hugging Face model directory.

  python -m llm_jax.convert --workdir=runs/bert --out=/tmp/bert-hf [--step=N]

The newest finished checkpoint (or ``--step``) of an encoder run becomes ``--out``:
config.json, model.safetensors and the run's tokenizer files where it has them in
Hugging Face's formats; ``transformers.AutoModelForMaskedLM.from_pretrained`` (or
``AutoModelForSequenceClassification``, ``AutoModel``, by the run's head) loads it.
See ``llm_jax/convert/exporter.py``.
"""

if __name__ == '__main__':
  from llm_jax import hostmem
  hostmem.setup()  # before anything starts threads (see llm_jax/hostmem.py)

from absl import flags  # noqa: E402

from llm_jax import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('workdir', None, "A training run's workdir (config.json and checkpoints).")
  flags.DEFINE_string('out', None, 'The Hugging Face model directory to write; must not exist or be empty.')
  flags.DEFINE_integer('step', None, 'The checkpoint step to export (default: the newest).')
  flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  cli.no_positional(argv)
  from llm_jax import convert  # here, so that --help needs no jax
  result = convert.export(FLAGS.workdir, FLAGS.out, FLAGS.step)
  files = ', '.join(['config.json', 'model.safetensors'] + result['tokenizer'])
  print(f'[llm_jax] wrote step {result["step"]} of {FLAGS.workdir} as a {result["architecture"]} to '
        f'{result["directory"]} ({files})', flush=True)
  if result['note']:
    print(f'[llm_jax] {result["note"]}', flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
