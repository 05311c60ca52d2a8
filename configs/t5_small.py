"""t5-small's shapes trained from scratch on pairs: WMT14 English -> French by default.

Raffel et al. (2020)'s T5-Small: 6 encoder + 6 decoder blocks, width 512, 8 heads of 64,
feed-forward 2048 (ReLU), 32 relative position buckets up to distance 128, dropout 0.1,
RMS norms before each sublayer, one embedding shared by both stacks and the rescaled
output, Mesh TensorFlow's fan-in initialization. With t5-small's 32128-token vocabulary
that is its 60,506,624 parameters (tests/test_seq2seq_configs.py); this config trains its
own SentencePiece vocabulary (unigram, as T5's) of 32000 on both sides of the training
pairs (128 x 512 fewer embedding rows: 60,441,088 parameters).

The optimizer is not T5's: T5 trained with Adafactor (inverse square root schedule,
factored second moments), which llm_jax does not have; this uses AdamW, with a linear
warmup where T5 holds the rate constant for 10^4 steps, then the same inverse-square-root
decay (train.schedule='rsqrt'). Its settings are a starting point, not a reproduction. A
batch is 128 packed rows of 256 source and 256 target tokens: the 2^16 token slots of T5's
128 sequences of 512. Any other pairs train the same way, e.g.
--config.data.dataset=pairs --config.data.files=train.tsv (source<TAB>target per line)
--config.data.task_prefix=''.

Published, for scale only: Raffel et al. (2020, Table 14) report 36.0 BLEU En->Fr on newstest2014
(--config.data.eval_split=test) for T5-Small, but pre-trained on C4 first; their from-scratch
baseline (their Table 1) is T5-Base-sized.

  python -m llm_jax.main --config=configs/t5_small.py --workdir=runs/t5_small

Offline, TFDS cannot download WMT: put its archives in a directory and add
--config.data.manual_dir=DIR (the error names the files).
"""

from llm_jax.config import base_config
from llm_jax.models.encoder_decoder import T5_LAYOUT


def get_config():
  config = base_config()
  config.model.update(T5_LAYOUT)              # relative buckets, RMS pre-norm, tied rescaled output, T5 init
  config.model.num_layers = 6                 # encoder blocks
  config.model.num_decoder_layers = 6         # decoder blocks
  config.model.emb_dim = 512                  # d_model
  config.model.num_heads = 8
  config.model.head_dim = 64                  # d_kv
  config.model.mlp_dim = 2048                 # d_ff
  config.model.relative_buckets = 32          # relative_attention_num_buckets
  config.model.relative_max_distance = 128    # relative_attention_max_distance
  config.model.dropout_rate = 0.1
  config.model.dtype = 'bfloat16'             # compute; parameters stay float32
  config.data.dataset = 'wmt14_translate/fr-en'
  config.data.source_key = 'en'               # translate English ...
  config.data.target_key = 'fr'               # ... to French
  config.data.task_prefix = 'translate English to French: '
  config.data.eval_split = 'validation'       # newstest2013
  config.data.tokenizer = 'sentencepiece'     # trained here on both sides of the training pairs
  config.data.sp_model_type = 'unigram'      # T5's SentencePiece model type
  config.data.vocab_size = 32000
  config.data.seq_len = 256                   # source tokens per packed row
  config.data.target_len = 256                # target tokens per packed row
  config.train.steps = 100_000
  config.train.batch_size = 128               # packed rows: 128 x (256 + 256) = 2^16 tokens
  config.train.learning_rate = 1e-3           # AdamW peak (T5: Adafactor, 0.01 for 10^4 steps)
  config.train.schedule = 'rsqrt'             # linear warmup, then peak * sqrt(warmup / step)
  config.train.warmup_steps = 10_000          # T5's 10^4 steps before the decay
  config.train.b2 = 0.999
  config.train.weight_decay = 0.01            # decoupled; norms and biases exempt
  config.eval.every_steps = 5000
  config.eval.max_batches = 20                # eval-loss batches of newstest2013
  config.eval.bleu_examples = 500             # newstest2013 pairs beam-decoded for BLEU each evaluation
  config.eval.num_beams = 4                   # T5's beam width
  config.eval.max_decode_len = 256
  config.sample.length_penalty = 0.6          # T5's alpha (here: sum log p / length ** 0.6)
  config.checkpoint.every_steps = 5000
  config.log_every_steps = 100
  return config
