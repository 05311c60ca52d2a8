"""Studies: a paper's ablation as variants of a config, run over seeds, reported against the paper.

  python -m llm_jax.experiments run experiments/NAME [--scale=cpu|accelerator] [--shard=I/N]
  python -m llm_jax.experiments report experiments/NAME [--workdir=ROOT[,ROOT...]]

``study`` defines a study (``Study``, ``Claim``), ``runner`` runs it (one training process
per variant x seed, resumable, shardable) and ``report`` writes its table and plots.
"""

from llm_jax.experiments.study import Claim, Run, Study, StudyError, load  # noqa: F401
