"""GPT-2 small shapes (124M with GPT-2's 50257-token vocabulary) for accelerators.

12 layers, 12 heads, width 768, context 1024, learned positions, GELU, tied embeddings,
bf16 compute with float32 parameters. Trains on TFDS lm1b with a SentencePiece BPE
vocabulary trained on it (32768 tokens: 111M parameters).

  python -m llm_jax.main --config=configs/gpt2_small.py --workdir=runs/gpt2_small

(On a Cloud TPU pod slice the workdir is a gcsfuse-mounted bucket; see docs/parallelism.md.)
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.dataset = 'lm1b'
  config.data.eval_split = 'test'          # lm1b has train and test
  config.data.tokenizer = 'sentencepiece'
  config.data.vocab_size = 32768
  config.data.max_documents = 0
  config.data.seq_len = 1024
  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.emb_dim = 768
  config.model.use_bias = True
  config.model.dtype = 'bfloat16'
  config.model.attention_kernel = 'dot_product'
  config.model.scan_layers = True
  config.model.remat = 'none'
  config.train.steps = 100_000
  config.train.batch_size = 512
  config.train.learning_rate = 6e-4
  config.train.end_learning_rate = 6e-5
  config.train.warmup_steps = 2000
  config.train.b2 = 0.95
  config.train.weight_decay = 0.1
  config.eval.every_steps = 2000
  config.eval.max_batches = 50
  config.checkpoint.every_steps = 2000
  config.log_every_steps = 100
  return config
