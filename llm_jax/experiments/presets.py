"""Settings the studies share, so each study.py says only what it varies.

``cpu_char_lm`` is the CPU scale of the decoder studies: a character-level GPT on the
embedded corpus (Python's own documentation, offline everywhere), 2 layers of width 128,
8 heads, rotary positions, context 64, batch 16, evaluated on 20 held-out batches; a run
takes under a minute on 2 CPU cores. Rotary positions, because in runs this short a
learned position table is barely used yet (learned positions end about 0.3 nats behind at
600 steps, experiments/positions), which would leave every other comparison to a model
that hardly reads its context. Checkpoints are written at the end only (``checkpoint.every_steps`` = the
run's length) and no sample is drawn, so a run's time is its training.
"""

CONFIG_CPU = 'configs/default.py'
CONFIG_GPT2 = 'configs/gpt2_small.py'
CONFIG_TRANSFORMER = 'configs/transformer_base_wmt14_ende.py'


def cpu_char_lm(steps: int = 600, **overrides) -> dict:
  """Overrides of configs/default.py for a CPU-sized character LM run of ``steps`` steps."""
  settings = {
      'data.seq_len': 64, 'model.num_layers': 2, 'model.emb_dim': 128, 'model.num_heads': 8,
      'model.pos_encoding': 'rope',
      'train.batch_size': 16, 'train.steps': steps, 'train.warmup_steps': steps // 10,
      'train.learning_rate': 2e-3, 'train.end_learning_rate': 2e-4,
      'eval.every_steps': steps // 6, 'eval.max_batches': 20, 'log_every_steps': steps // 12,
      'checkpoint.every_steps': steps, 'sample.prompt': ''}
  settings.update(overrides)
  return settings
