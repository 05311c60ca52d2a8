"""Vaswani et al. (2017)'s base Transformer on WMT14 English -> German.

6 encoder + 6 decoder layers, width 512, 8 heads, feed-forward 2048 (ReLU), sinusoidal
positions, post-LN, biases, dropout 0.1, label smoothing 0.1, one embedding shared by both
stacks and the output (times sqrt(d_model) on the way in, their section 3.4); Adam (b1 0.9,
b2 0.98, eps 1e-9, no weight decay, no clipping) with their schedule
d^-0.5 * min(step^-0.5, step * 4000^-1.5): 'rsqrt' with warmup 4000 and peak learning_rate =
512^-0.5 * 4000^-0.5 (about 7.0e-4); 100k steps. They used a shared BPE vocabulary of 37000
tokens; this trains a shared SentencePiece BPE vocabulary of 37000 on both sides of the
training pairs (63,082,496 parameters; their Table 3 says 65M).

Batch: theirs held about 25,000 source and 25,000 target tokens. Here a batch is 96 packed
rows of 256 source and 256 target tokens, 24,576 token slots a side: packing leaves some
slots empty, so slightly fewer real tokens; 96 divides over 1, 2, 4 or 8 devices.

Published (their Table 2/3): 27.3 BLEU on newstest2014 (--config.data.eval_split=test), 25.8
BLEU and perplexity 4.92 on newstest2013, the validation split used here. Theirs is tokenized
BLEU of the average of the last 5 checkpoints with beam 4 and length penalty 0.6; eval_bleu is
sacreBLEU on detokenized text of one checkpoint, and its length penalty is a plain
length ** 0.6, not their (5 + length) / 6 form, so expect it somewhat lower.

  python -m llm_jax.main --config=configs/transformer_base_wmt14_ende.py --workdir=runs/transformer_base

Offline, TFDS cannot download WMT: put its archives in a directory and add
--config.data.manual_dir=DIR (the error names the files).
"""

from llm_jax.config import base_config
from llm_jax.models.encoder_decoder import TRANSFORMER_LAYOUT


def get_config():
  config = base_config()
  config.model.update(TRANSFORMER_LAYOUT)      # sinusoidal, post-LN, ReLU, biases, shared embedding x sqrt(512)
  config.model.num_layers = 6                  # encoder layers
  config.model.num_decoder_layers = 6          # decoder layers
  config.model.emb_dim = 512                   # d_model
  config.model.num_heads = 8
  config.model.mlp_dim = 2048                  # d_ff
  config.model.dropout_rate = 0.1              # P_drop
  config.data.dataset = 'wmt14_translate/de-en'
  config.data.source_key = 'en'                # translate English ...
  config.data.target_key = 'de'                # ... to German
  config.data.eval_split = 'validation'        # newstest2013
  config.data.tokenizer = 'sentencepiece'      # one vocabulary for both languages
  config.data.sp_model_type = 'bpe'
  config.data.vocab_size = 37000
  config.data.seq_len = 256                    # source tokens per packed row
  config.data.target_len = 256                 # target tokens per packed row
  config.train.steps = 100_000
  config.train.batch_size = 96                 # packed rows: 24,576 source + 24,576 target token slots
  config.train.learning_rate = 512 ** -0.5 * 4000 ** -0.5  # the schedule's peak, at the end of the warmup
  config.train.warmup_steps = 4000
  config.train.schedule = 'rsqrt'              # then peak * sqrt(4000 / step)
  config.train.b1 = 0.9
  config.train.b2 = 0.98
  config.train.eps = 1e-9
  config.train.weight_decay = 0.0              # plain Adam
  config.train.grad_clip = 0.0                 # no clipping
  config.train.label_smoothing = 0.1           # epsilon_ls
  config.eval.every_steps = 5000
  config.eval.max_batches = 20                 # eval-loss batches of newstest2013
  config.eval.bleu_examples = 512              # newstest2013 pairs beam-decoded for BLEU each evaluation
  config.eval.num_beams = 4
  config.eval.max_decode_len = 256
  config.sample.length_penalty = 0.6           # alpha (here: sum log p / length ** 0.6)
  config.checkpoint.every_steps = 5000
  config.log_every_steps = 100
  return config
