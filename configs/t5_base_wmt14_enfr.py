"""Fine-tune t5-base from its Hugging Face weights on WMT14 en→fr (the seed recipe).

What a researcher runs with transformers' Trainer: t5-base, its SentencePiece tokenizer, the
task prefix 'translate English to French: ', 3 epochs, batch 16, warmup 500, weight decay
0.01, AdamW at 5e-5 (Trainer's defaults: b2 0.999, eps 1e-8, linear decay to 0), sources and
targets cut to 128 tokens; BLEU on newstest2013 (the validation split) decoded with 5 beams
(`generate(num_beams=5, early_stopping=True)`), on a bounded number of examples. Needs the
model (a Hub id with the [hf] extra, or a local directory) and the TFDS data ([tfds] extra;
offline, --config.data.manual_dir with the statmt.org archives).

  python -m llm_jax.main --config=configs/t5_base_wmt14_enfr.py --workdir=runs/t5_base_enfr
"""

from llm_jax.config import base_config
from llm_jax.models.encoder_decoder import T5_LAYOUT


def get_config():
  config = base_config()
  config.model.update(T5_LAYOUT)
  config.model.num_layers = 12         # t5-base: 12+12 layers, d_model 768, 12 heads of 64, d_ff 3072
  config.model.num_decoder_layers = 12
  config.model.emb_dim = 768
  config.model.num_heads = 12
  config.model.head_dim = 64
  config.model.mlp_dim = 3072
  config.model.max_len = 512           # t5-base's n_positions
  config.model.dropout_rate = 0.1
  config.init_from = 't5-base'         # or a local directory holding its config.json and weights
  config.data.tokenizer = 'pretrained'
  config.data.tokenizer_path = 't5-base'
  config.data.dataset = 'wmt14_translate/fr-en'
  config.data.source_key = 'en'
  config.data.target_key = 'fr'
  config.data.task_prefix = 'translate English to French: '
  config.data.seq_len = 128
  config.data.target_len = 128
  config.train.epochs = 3.0
  config.train.batch_size = 16
  config.train.learning_rate = 5e-5
  config.train.warmup_steps = 500
  config.train.schedule = 'linear'
  config.train.end_learning_rate = 0.0
  config.train.weight_decay = 0.01
  config.train.b2 = 0.999
  config.train.eps = 1e-8
  config.train.grad_clip = 1.0
  config.eval.every_steps = 5000
  config.eval.max_batches = 50
  config.eval.bleu_examples = 500
  config.eval.num_beams = 5
  config.eval.max_decode_len = 49      # generate(max_length=50) counts the start token
  config.checkpoint.every_steps = 5000
  return config
