"""A tiny T5 that learns to reverse the word order of short phrases, on 2 CPU cores.

T5's layout (relative position buckets, RMS pre-norms, no attention scaling, ReLU, tied and
rescaled output, T5's fan-in initialization) at small shapes, trained from scratch on
'reverse_words': phrases of 3-8 lowercase words from the embedded corpus, the target the same
words in reverse order; the eval phrases are held out (never seen in training). Characters as
tokens: a word is spelled the same wherever it stands and whether training saw it or not,
where a subword vocabulary trained on these 5,128 phrases lets the model memorize them and
leaves the held-out phrases' unseen words in rarely trained pieces. Each evaluation decodes
the first 128 eval phrases with 4 beams and reports BLEU and exact match; after the 3000
steps the exact match is above 0.95 (experiments/t5_tiny_reverse/README.md has the run,
tests/test_t5_learns.py checks it with -m slow).

  python -m llm_jax.main --config=configs/t5_tiny.py --workdir=runs/t5_tiny
  python -m llm_jax.sample --workdir=runs/t5_tiny --prompt='the quick brown fox' --num_beams=4
"""

from llm_jax.config import base_config
from llm_jax.models.encoder_decoder import T5_LAYOUT


def get_config():
  config = base_config()
  config.model.update(T5_LAYOUT)              # relative buckets, RMS pre-norm, tied rescaled output, T5 init
  config.model.num_layers = 2                 # encoder blocks
  config.model.num_decoder_layers = 2         # decoder blocks
  config.model.num_heads = 4
  config.model.emb_dim = 128
  config.model.mlp_dim = 512
  config.model.relative_buckets = 32          # per stack (the encoder's: 16 each way)
  config.model.relative_max_distance = 128    # longer than any phrase (at most 79 characters with eos)
  config.model.dropout_rate = 0.0
  config.data.dataset = 'reverse_words'
  config.data.tokenizer = 'char'              # 26 letters and the space (+ pad, eos, unk)
  config.data.seq_len = 128                   # source characters per packed row
  config.data.target_len = 128                # target characters per packed row
  config.train.steps = 3000
  config.train.batch_size = 16                # packed rows (about 3 phrases each)
  config.train.learning_rate = 2e-3           # 1e-3 learns slower, 3e-3 generalizes worse
  config.train.warmup_steps = 200
  config.train.schedule = 'cosine'
  config.train.end_learning_rate = 1e-4
  config.train.weight_decay = 0.01
  config.eval.every_steps = 1000
  config.eval.max_batches = 10                # eval-loss batches: all the eval rows
  config.eval.bleu_examples = 128             # eval phrases beam-decoded each evaluation
  config.eval.num_beams = 4
  config.eval.max_decode_len = 80             # the longest target and its eos
  config.checkpoint.every_steps = 1000
  config.log_every_steps = 50
  config.sample.num_beams = 4                 # the eval prompts' decoding (samples.jsonl)
  config.sample.max_new_tokens = 80
  config.sample.eval_prompts = 'the quick brown fox jumps|one two three four five'
  return config
