"""Fine-tune t5-base from its Hugging Face weights on WMT14 English -> French (the seed recipe).

What a researcher runs with transformers' Trainer: t5-base and its SentencePiece tokenizer,
the task prefix 'translate English to French: ', 3 epochs, batch 16, warmup 500, weight decay
0.01 (not on norms and biases), AdamW at 5e-5 with Trainer's defaults (b1 0.9, b2 0.999, eps
1e-8, gradient norm clipped at 1, linear decay to 0), dropout 0.1 (t5-base's config.json),
sources and targets cut to 128 tokens. Each evaluation beam-decodes the first 500 pairs of
newstest2013 (wmt14_translate's validation split) with 5 beams and scores sacreBLEU.

Published: Raffel et al. (2020, Table 14) report 41.2 BLEU for T5-Base on newstest2014 En->Fr
(--config.data.eval_split=test; this config's newstest2013 figures are not that number).
Unlike Trainer, which pads every pair to its own row, llm_jax packs several short pairs into
one row of 128 + 128 tokens, so a batch of 16 rows holds more than 16 pairs and 3 epochs take
fewer steps. The model fields are t5-base's exactly, as init_from checks.

Needs t5-base (a Hub id, with the [hf] extra, or a local directory holding its config.json,
weights and tokenizer.json: then pass it to both init_from and data.tokenizer_path) and the
TFDS data ([tfds] extra; offline, --config.data.manual_dir=DIR with the statmt.org archives
that the error names).

  python -m llm_jax.main --config=configs/t5_base_wmt14_enfr.py --workdir=runs/t5_base_enfr
"""

from llm_jax.config import base_config
from llm_jax.models.encoder_decoder import T5_LAYOUT


def get_config():
  config = base_config()
  config.model.update(T5_LAYOUT)              # t5-base's layout: relative buckets, RMS pre-norm, tied rescaled output
  config.model.num_layers = 12                # encoder blocks
  config.model.num_decoder_layers = 12        # decoder blocks
  config.model.emb_dim = 768                  # d_model
  config.model.num_heads = 12
  config.model.head_dim = 64                  # d_kv
  config.model.mlp_dim = 3072                 # d_ff
  config.model.relative_buckets = 32          # relative_attention_num_buckets
  config.model.relative_max_distance = 128    # relative_attention_max_distance
  config.model.max_len = 512                  # n_positions
  config.model.vocab_size = 32128             # the checkpoint's rows; its tokenizer has 32100 ids
  config.model.dropout_rate = 0.1             # config.json's dropout_rate
  config.init_from = 't5-base'                # Hub id or local model directory
  config.data.tokenizer = 'pretrained'
  config.data.tokenizer_path = 't5-base'      # its tokenizer.json
  config.data.dataset = 'wmt14_translate/fr-en'
  config.data.source_key = 'en'               # translate English ...
  config.data.target_key = 'fr'               # ... to French
  config.data.task_prefix = 'translate English to French: '
  config.data.eval_split = 'validation'       # newstest2013
  config.data.seq_len = 128                   # source tokens per packed row
  config.data.target_len = 128                # target tokens per packed row
  config.train.epochs = 3.0                   # passes over the training rows (sets the steps)
  config.train.batch_size = 16                # packed rows
  config.train.learning_rate = 5e-5           # Trainer's default
  config.train.warmup_steps = 500
  config.train.schedule = 'linear'            # linear decay after the warmup ...
  config.train.end_learning_rate = 0.0        # ... to 0
  config.train.weight_decay = 0.01
  config.train.b1 = 0.9
  config.train.b2 = 0.999
  config.train.eps = 1e-8
  config.train.grad_clip = 1.0                # Trainer's max_grad_norm
  config.eval.every_steps = 5000
  config.eval.max_batches = 50                # eval-loss batches of newstest2013
  config.eval.bleu_examples = 500             # newstest2013 pairs beam-decoded for BLEU each evaluation
  config.eval.num_beams = 5
  config.eval.max_decode_len = 128            # new tokens at most (the targets' cut)
  config.checkpoint.every_steps = 5000
  config.log_every_steps = 100
  return config
