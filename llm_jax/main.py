"""Train a model from a config file.

  python -m llm_jax.main --config=configs/default.py --workdir=/tmp/run [--config.key=value ...]

Re-running the same command resumes from the newest checkpoint in --workdir. A resume
that changes the model, the data or the batch is refused unless --allow_change names
the keys (llm_jax/workdir.py).

Several hosts run the same command (a shared --workdir); a Cloud TPU pod slice is
detected by itself, elsewhere add --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I (docs/parallelism.md).

Exit codes (``llm_jax.errors``): 0 finished; 1 an unexpected error (traceback); 2 a bad
flag, config or input data; 3 a NaN/Inf loss, gradient or parameter norm (nothing of that
step saved); 4 the workdir cannot be resumed with this config (corrupt, another model, a
change not allowed); 5 a checkpoint save failed (the previous one is intact); 7 a dataset
could not be prepared; 8 another run holds the workdir; 75 preempted by SIGTERM after
saving; 130 Ctrl-C (after saving, once training had started). Re-run to resume after 75 or 130.
"""

if __name__ == '__main__':
  from llm_jax import hostmem
  hostmem.setup()  # before anything starts threads (see llm_jax/hostmem.py)

from absl import flags  # noqa: E402
from absl import logging
from ml_collections import config_flags

from llm_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/NAME.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config; resumes from it.')
flags.DEFINE_list('allow_change', [], 'Config keys whose change a resume may take over (e.g. '
                  'train.batch_size,seed); the change is recorded in WORKDIR/config_history.jsonl.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host outside Cloud TPU: host:port of process 0 '
                    '(with --num_processes and --process_id; a TPU pod slice needs none of the three).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: the number of processes (one per host).')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0 .. num_processes - 1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.no_positional(argv)
  from llm_jax import parallel
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one host's library logs are enough
  from llm_jax.train import loop
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, allow_changes=FLAGS.allow_change)


def run():
  cli.run(main)


if __name__ == '__main__':
  run()
