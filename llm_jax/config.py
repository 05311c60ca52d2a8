"""Shared config pieces, validation, and the bridge from the experiment config to the model.

``base_config()`` holds every key with its default and a one-line meaning; config files
in configs/ start from it and change what their experiment needs. ``validate`` checks
a config before anything is compiled and raises ``ConfigError`` with one line that
names the key and the fix.
"""

import os
import re

import jax.numpy as jnp
import ml_collections

from llm_jax import parallel
from llm_jax.data import tokenizers
from llm_jax.errors import ConfigError  # raised by validate; callers catch it from here too
from llm_jax.models import attention_kernels
from llm_jax.models import axes
from llm_jax.models import blocks
from llm_jax.models import kinds
from llm_jax.models import layers


def tokenizer_names() -> tuple[str, ...]:
  return tokenizers.names()


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # seeds parameters, dropout and data order
  c.log_every_steps = 50          # train metrics to metrics.jsonl / TensorBoard
  c.init_from = ''                # parameters to start from: a run's workdir, or a Hugging Face model directory
                                  # or Hub id ('bert-base-uncased'); parameters the model has and the source
                                  # lacks (a new head) start fresh
  c.parallelism = 'jit'           # 'jit' (logical-axis sharding over the mesh) | 'pmap' (replicated, data parallel)

  c.model = ml_collections.ConfigDict()
  m = c.model
  m.kind = 'decoder'              # model kind: 'decoder' (GPT-style causal LM) | 'encoder' (BERT-style)
                                  # | 'encoder_decoder' (T5-style seq2seq)
  m.head = 'lm'                   # decoder, encoder_decoder: 'lm'; encoder: 'mlm' (masked LM) | 'classify'
                                  # | 'none' (hidden states)
  m.num_classes = 0               # head='classify': number of labels
  m.vocab_size = -1               # rows of the token embedding and the output (-1: the tokenizer's ids);
                                  # more than the tokenizer has pads the table (t5-base: 32128 for 32100 ids)
  m.num_layers = 4                # transformer blocks L (encoder_decoder: of the encoder)
  m.num_decoder_layers = -1       # encoder_decoder: decoder blocks (-1: num_layers)
  m.num_heads = 4                 # query heads N
  m.num_kv_heads = -1             # key/value heads K (-1: = num_heads; 1: multi-query)
  m.emb_dim = 128                 # model width D
  m.head_dim = -1                 # H (-1: emb_dim // num_heads)
  m.mlp_dim = -1                  # feed-forward width F (-1: 4 * emb_dim)
  m.max_len = -1                  # position table / KV cache length (-1: data.seq_len)
  m.dropout_rate = 0.0            # residual, embedding and MLP dropout
  m.attention_dropout_rate = 0.0  # dropout on attention probabilities ('xla' kernel only)
  m.pos_encoding = 'learned'      # 'learned' | 'sinusoidal' | 'rope' | 'alibi' (BLOOM's attention bias)
                                  # | 't5_relative' (T5's learned relative buckets, one table per stack) | 'none'
  m.relative_buckets = 32         # t5_relative: buckets per stack (half per direction in the encoder)
  m.relative_max_distance = 128   # t5_relative: distances past this share the last bucket
  m.attention_scale = True        # scale attention logits by 1/sqrt(head_dim) (False: T5, which folds it
                                  # into the query weights' initialization)
  m.rescale_output = True         # encoder_decoder: logits of hidden·emb_dim^-0.5 (the original T5; not v1.1)
  m.rope_theta = 10000.0          # RoPE base
  m.mlp_activation = 'gelu_tanh'  # 'relu' | 'gelu_tanh' (GPT-2's approximation) | 'gelu_exact' (BERT's erf) | 'swish'
                                  # | gated (Shazeer 2020): 'swiglu' | 'geglu' (tanh-GELU: T5 v1.1, flan-t5)
                                  # | 'reglu' | 'glu' (sigmoid) | 'bilinear' (no activation)
  m.norm = 'layernorm'            # 'layernorm' | 'rmsnorm'
  m.norm_placement = 'pre'        # 'pre' (GPT-2) | 'post' (original Transformer, BERT)
  m.norm_eps = 1e-5               # epsilon of every norm (BERT: 1e-12)
  m.embed_norm = False            # a norm right after the embeddings (BERT)
  m.embed_scale = False           # token embeddings times sqrt(emb_dim) (the original Transformer)
  m.type_vocab_size = 0           # token-type (sentence A/B) embeddings (BERT: 2); 0: none
  m.use_bias = False              # biases in dense layers and LayerNorm
  m.tie_embeddings = True         # output projection = token embedding transposed
  m.attention_kernel = 'auto'     # 'auto' (best for the platform; see llm_jax/models/attention_kernels.py) | 'xla' (reference)
                                  # | 'blocked' (skips masked blocks) | 'cpu_fused' (C++, CPU) | 'dot_product'
                                  # | 'cudnn' (GPU) | 'splash' (TPU)
  m.attention_block = 64          # query/key tile of the 'blocked' kernel
  m.dtype = 'float32'             # compute dtype: 'float32' | 'bfloat16'; params stay float32
  m.remat = 'none'                # per-block gradient checkpointing: none|full|dots|dots_no_batch|save_named
  m.remat_names = 'qkv,attn_context'  # remat='save_named': activations kept, from qkv, attn_context,
                                  # attn_out, mlp_hidden, mlp_out (see llm_jax/models/layers.py)
  m.scan_layers = False           # nn.scan over layers (flat compile time in depth)
  m.init_std = 0.02               # std of the normal initializer
  m.init_scheme = 'normal'        # 'normal': N(0, init_std), residual outputs / sqrt(2 L) (GPT-2) | 't5': scaled
                                  # by fan-in as T5 (see llm_jax/models/layers.py initial_std)

  c.data = ml_collections.ConfigDict()
  d = c.data
  d.dataset = 'embedded'          # 'embedded' | 'files' | a TFDS name ('tiny_shakespeare', 'lm1b', ...)
  d.dataset_config = ''           # a dataset's named configuration (e.g. the Hugging Face config wikitext-103-raw-v1)
  d.text_key = 'text'             # TFDS feature holding the text
  d.text_b_key = ''               # classification: the second sentence of a pair ('' = single sentences)
  d.label_key = 'label'           # classification: the integer label
  d.train_split = 'train'
  d.eval_split = 'validation'     # '' = no evaluation
  d.files = ''                    # dataset='files': comma-separated globs, one document per file
  d.eval_fraction = 0.05          # dataset='files': share held out for evaluation
  d.data_dir = ''                 # TFDS data_dir ('' = TFDS default)
  d.manual_dir = ''               # TFDS manual_dir for datasets that cannot download
  d.seq_len = 128                 # tokens per training row T (encoder_decoder: source tokens S)
  d.target_len = -1               # encoder_decoder: target tokens per row (-1: seq_len)
  d.source_key = 'source'         # seq2seq: the field holding the source text (TFDS translate: a language, 'en')
  d.target_key = 'target'         # seq2seq: the field holding the target text ('fr')
  d.task_prefix = ''              # seq2seq: text put before every source ('translate English to French: ')
  d.target_files = ''             # dataset='pairs': aligned target files, line by line with data.files
                                  # ('' : data.files are TSV files, source<TAB>target per line)
  d.tokenizer = 'char'            # 'char' | 'byte' | 'sentencepiece' | 'wordpiece' (trained here) | 'pretrained'
  d.tokenizer_path = ''           # tokenizer='pretrained': a model directory (tokenizer.json or vocab.txt)
  d.vocab_size = 8000             # sentencepiece / wordpiece vocabulary size
  d.mlm_probability = 0.15        # masked LM: share of tokens chosen (80% [MASK], 10% random, 10% kept)
  d.sp_model_type = 'bpe'         # sentencepiece model: 'bpe' | 'unigram'
  d.max_documents = 0             # cap documents per split (0 = all)
  d.cache_dir = ''                # tokenizer + token cache ('' = WORKDIR/data)

  c.train = ml_collections.ConfigDict()
  t = c.train
  t.steps = 1000                  # length of the run; sets the schedule
  t.epochs = 0.0                  # > 0: the run's length in passes over the training data instead of train.steps
                                  # (steps = ceil(epochs * training rows / batch_size), known once the data is)
  t.stop_at = -1                  # stop after this step with a checkpoint, schedule untouched (-1: off)
  t.batch_size = 32               # global batch, in rows of seq_len tokens
  t.micro_batches = 1             # gradient accumulation: batch_size splits into this many
  t.micro_batch_mode = 'scan'     # 'scan' (one micro-batch in memory at a time) | 'parallel' (unrolled,
                                  # run side by side: faster on a small CPU at small shapes, more memory)
  t.learning_rate = 1e-3          # peak learning rate
  t.end_learning_rate = 1e-4      # learning rate at the end of the decay
  t.warmup_steps = 100            # linear warmup from 0
  t.schedule = 'cosine'           # 'cosine' | 'linear' | 'constant' (after warmup) | 'rsqrt' (peak·sqrt(warmup/step)
                                  # after warmup: Vaswani et al.'s inverse square root)
  t.decay_steps = -1              # steps of warmup + decay (-1: steps)
  t.b1 = 0.9
  t.b2 = 0.99
  t.eps = 1e-8
  t.weight_decay = 0.1            # decoupled (AdamW)
  t.decay_norms = False           # apply weight decay to norm scales
  t.decay_biases = False          # ... to biases
  t.decay_embeddings = True       # ... to embedding tables
  t.grad_clip = 1.0               # global-norm clipping (0: off)
  t.z_loss = 0.0                  # weight of log(Z)^2 (PaLM); 0: off
  t.label_smoothing = 0.0         # share of each target's probability spread over the vocabulary (Vaswani et al.: 0.1)
  t.loss_chunk_size = 0           # >0: output projection + loss over this many positions of every row at a
                                  # time (no [B,T,V] logits; a last shorter slice if it does not divide T); 0: off
  t.nonfinite = 'abort'           # NaN/Inf loss, grad or param norm: 'abort' (exit 3, no save) | 'skip' (drop the update)

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 250        # 0: evaluate only at the end
  c.eval.max_batches = 0          # eval batches (of train.batch_size rows) per evaluation (0: whole split)
  c.eval.bleu_examples = 0        # encoder_decoder: eval examples decoded for BLEU (sacrebleu) each evaluation (0: off)
  c.eval.num_beams = 1            # ... decoded with this many beams (1: greedy)
  c.eval.max_decode_len = -1      # ... new tokens at most (-1: data.target_len)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # data-parallel axis size (-1: the devices left over)
  c.mesh.fsdp = 1                 # fully-sharded data-parallel axis size
  c.mesh.tensor = 1               # tensor (Megatron) parallel axis size
  c.mesh.dcn_data = 1             # multi-slice: data axis across slices (then data/fsdp/tensor are per slice)
  c.mesh.dcn_fsdp = 1             # multi-slice: fsdp axis across slices
  # logical axis -> mesh axes ('fsdp', 'data,fsdp', '' = replicated); see docs/parallelism.md
  c.mesh.rules = ml_collections.ConfigDict(parallel.rules_to_config(parallel.DEFAULT_RULES))

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500  # save interval; a final checkpoint is always written
  c.checkpoint.max_to_keep = 3    # newest checkpoints kept (>= 1, so a run can always resume)
  c.checkpoint.async_save = True  # save in the background while training continues
  c.checkpoint.keep_best = 0      # also keep the N best by keep_best_metric (0: off); needs eval at each save
  c.checkpoint.keep_best_metric = 'eval_loss'  # metric ranking checkpoints for keep_best
  c.checkpoint.keep_best_mode = 'min'          # 'min' | 'max': which end of keep_best_metric is best
  c.checkpoint.fallback = False   # a corrupt newest checkpoint: False = stop with an error, True = set it aside, use the previous

  c.sample = ml_collections.ConfigDict()  # decoding for the samples a run prints and `python -m llm_jax.sample`
  c.sample.prompt = ''            # if set, sample this prompt at the end of training
  c.sample.eval_prompts = ''      # '|'-separated prompts decoded at every evaluation: WORKDIR/samples.jsonl and
                                  # TensorBoard's text tab ('' = none; encoder_decoder: sources to translate)
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8      # 0: greedy
  c.sample.top_k = 0              # keep the k most likely tokens (0: off)
  c.sample.top_p = 1.0            # nucleus mass (1: off)
  c.sample.num_beams = 1          # > 1: beam search, greedy (temperature, top_k and top_p are for 1 beam)
  c.sample.length_penalty = 1.0   # beam scores are sum log p / length ** length_penalty
  c.sample.early_stopping = 'false'  # beam search: 'true' | 'false' | 'never' (Hugging Face's meanings)
  return c


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*(/[\w.-]+)?')


def _one_of(key, value, options):
  if value not in options:
    raise ConfigError(f'config.{key}={value!r} is unknown; choose one of {", ".join(sorted(options))}.')


def _positive(config, *keys):
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    if value <= 0:
      raise ConfigError(f'config.{key}={value} must be positive.')


def validate(config: ml_collections.ConfigDict, num_devices: int = 1, check_memory: bool = True) -> None:
  """Raises ConfigError (one line: the key and the fix) for a config that cannot run."""
  m, d, t = config.model, config.data, config.train
  if m.vocab_size != -1 and m.vocab_size < 1:
    raise ConfigError(f'config.model.vocab_size={m.vocab_size} must be -1 (the tokenizer\'s size) or positive.')
  _positive(config, 'model.num_layers', 'model.num_heads', 'model.emb_dim', 'data.seq_len',
            'train.steps', 'train.batch_size', 'train.micro_batches', 'log_every_steps',
            'checkpoint.every_steps', 'checkpoint.max_to_keep')
  if config.eval.every_steps < 0:
    raise ConfigError(f'config.eval.every_steps={config.eval.every_steps} must be >= 0 (0: only at the end).')
  _one_of('model.kind', m.kind, kinds.names())
  heads = kinds.get(m.kind).heads
  if m.head not in heads:
    raise ConfigError(f'config.model.head={m.head!r} does not fit model.kind={m.kind!r}; choose one of '
                      f'{", ".join(heads)}.')
  if m.head == 'classify' and m.num_classes < 2:
    raise ConfigError(f'config.model.num_classes={m.num_classes}: a classifier needs at least 2; set it to '
                      'the number of labels of the task.')
  if m.mlp_activation == 'gelu':
    raise ConfigError("config.model.mlp_activation='gelu' is ambiguous: use 'gelu_tanh' (GPT-2's approximation, "
                      "what 'gelu' meant before) or 'gelu_exact' (BERT's erf form).")
  _one_of('model.pos_encoding', m.pos_encoding, layers.positional_names())
  _one_of('model.mlp_activation', m.mlp_activation, layers.ACTIVATIONS)
  _one_of('model.norm', m.norm, layers.NORMS)
  _one_of('model.norm_placement', m.norm_placement, ('pre', 'post'))
  _one_of('model.init_scheme', m.init_scheme, layers.INIT_SCHEMES)
  _one_of('model.dtype', m.dtype, DTYPES)
  _one_of('model.remat', m.remat, blocks.REMAT_POLICIES)
  names = remat_names(m)
  if m.remat == 'save_named' and (not names or not set(names) <= set(layers.CHECKPOINT_NAMES)):
    raise ConfigError(f'config.model.remat_names={m.remat_names!r} must name activations from '
                      f'{", ".join(layers.CHECKPOINT_NAMES)} (comma-separated).')
  if t.loss_chunk_size < 0:
    raise ConfigError(f'config.train.loss_chunk_size={t.loss_chunk_size} must be >= 0 (0: off).')
  _one_of('model.attention_kernel', m.attention_kernel, attention_kernels.names())
  _one_of('train.schedule', t.schedule, ('cosine', 'linear', 'constant', 'rsqrt'))
  if t.schedule == 'rsqrt' and t.warmup_steps < 1:
    raise ConfigError("config.train.schedule='rsqrt' decays as sqrt(warmup_steps / step): set "
                      'config.train.warmup_steps >= 1 (Vaswani et al.: 4000).')
  _validate_seq2seq(config)
  _one_of('parallelism', config.parallelism, ('jit', 'pmap'))
  if m.emb_dim % m.num_heads and m.head_dim == -1:
    raise ConfigError(f'config.model.num_heads={m.num_heads} does not divide config.model.emb_dim='
                      f'{m.emb_dim}; pick heads that divide the width or set config.model.head_dim.')
  kv = m.num_heads if m.num_kv_heads == -1 else m.num_kv_heads
  if kv <= 0 or m.num_heads % kv:
    raise ConfigError(f'config.model.num_kv_heads={m.num_kv_heads} must divide config.model.num_heads='
                      f'{m.num_heads} (use a divisor, or -1 for num_heads).')
  head_dim = m.head_dim if m.head_dim != -1 else m.emb_dim // m.num_heads
  if m.pos_encoding == 'rope' and head_dim % 2:
    raise ConfigError(f'rope needs an even head dim, got {head_dim}; change config.model.head_dim or num_heads.')
  if m.max_len != -1 and d.seq_len > m.max_len:
    raise ConfigError(f'config.data.seq_len={d.seq_len} is longer than config.model.max_len={m.max_len} '
                      f'positions; raise max_len or lower seq_len.')
  is_bias = layers.position_bias(m.pos_encoding) or m.pos_encoding in layers.LEARNED_BIAS
  if is_bias and not attention_kernels.supports_bias(m.attention_kernel):
    raise ConfigError(f'config.model.pos_encoding={m.pos_encoding!r} is an attention bias, which '
                      f'config.model.attention_kernel={m.attention_kernel!r} does not take; use attention_kernel=auto, '
                      'blocked or xla.')
  if m.attention_dropout_rate > 0 and not attention_kernels.supports_dropout(m.attention_kernel):
    raise ConfigError(f'config.model.attention_kernel={m.attention_kernel!r} has no attention dropout; '
                      f'set config.model.attention_dropout_rate=0 or use attention_kernel=auto, blocked or xla.')
  kernel_problem = attention_kernels.unsupported(m.attention_kernel, dtype=DTYPES[m.dtype], head_dim=head_dim,
                                                 seq_len=d.seq_len)
  if kernel_problem:  # platform, dtype, head dim or length the kernel cannot take (cudnn, splash)
    raise ConfigError(kernel_problem)
  if not 0 <= m.dropout_rate < 1 or not 0 <= m.attention_dropout_rate < 1:
    raise ConfigError('config.model.dropout_rate and attention_dropout_rate must be in [0, 1).')
  _one_of('data.tokenizer', d.tokenizer, tokenizer_names())
  if d.tokenizer == 'pretrained' and not d.tokenizer_path:
    raise ConfigError("config.data.tokenizer='pretrained' needs config.data.tokenizer_path: a model directory "
                      'holding tokenizer.json or vocab.txt.')
  if not 0 < d.mlm_probability < 1:
    raise ConfigError(f'config.data.mlm_probability={d.mlm_probability} must be in (0, 1).')
  _one_of('train.micro_batch_mode', t.micro_batch_mode, ('scan', 'parallel'))
  if t.batch_size % t.micro_batches:
    raise ConfigError(f'config.train.batch_size={t.batch_size} is not divisible by '
                      f'config.train.micro_batches={t.micro_batches}.')
  try:  # mesh vs devices, batch vs data×fsdp, model dims vs the axes that split them
    parallel.validate(config, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if t.epochs < 0:
    raise ConfigError(f'config.train.epochs={t.epochs} must be >= 0 (0: use train.steps).')
  if t.stop_at != -1 and not 0 < t.stop_at <= (t.steps if not t.epochs else t.stop_at):
    raise ConfigError(f'config.train.stop_at={t.stop_at} must be in 1..train.steps={t.steps} (or -1).')
  if t.warmup_steps < 0:
    raise ConfigError(f'config.train.warmup_steps={t.warmup_steps} must be >= 0.')
  max_len = m.max_len if m.max_len != -1 else default_max_len(config)
  _validate_sample(config, max_len)
  if config.sample.prompt and config.sample.max_new_tokens >= max_len and m.kind != 'encoder_decoder':
    raise ConfigError(f'config.sample.max_new_tokens={config.sample.max_new_tokens} leaves no room for the prompt '
                      f'in {max_len} positions (config.model.max_len); lower it below {max_len}.')
  _one_of('train.nonfinite', t.nonfinite, ('abort', 'skip'))
  if check_memory:  # off where the config is checked away from the devices it will run on (a study)
    _validate_memory(config, num_devices)
  _validate_checkpoint(config)
  if config.init_from and not os.path.isdir(config.init_from) and not _HUB_ID.fullmatch(config.init_from):
    raise ConfigError(f'config.init_from={config.init_from!r} is neither a directory nor a Hugging Face Hub id; '
                      'give a run\'s workdir, a model directory, or an id such as bert-base-uncased.')


def _gib(n: float) -> str:
  return f'{n / 2 ** 40:.1f} TiB' if n >= 2 ** 40 else f'{n / 2 ** 30:.1f} GiB'


def attention_bytes(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """A lower bound on one device's memory for the attention probabilities the backward pass keeps.

  Kernels that materialize them (all but cudnn and splash) keep [rows, heads, T, T] float32
  per layer (about half of it where causal tiles are skipped), for every layer without
  remat and for one layer at a time with it; rows and heads are this device's share.
  """
  m, t = config.model, config.train
  data, fsdp, tensor = parallel.mesh_shape(config.mesh, num_devices)
  rules = parallel.rules_from_config(config.mesh.rules)
  sizes = dict(data=data, fsdp=fsdp, tensor=tensor)
  rows = max(1, t.batch_size // t.micro_batches // parallel.rule_size(rules, axes.ACT_BATCH, sizes))
  heads = max(1, m.num_heads // parallel.rule_size(rules, axes.ACT_HEADS, sizes))
  layers_kept = m.num_layers if m.remat == 'none' else 1
  return int(rows * heads * config.data.seq_len ** 2 * 4 * layers_kept * 0.5)


def _validate_memory(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """ConfigError when the attention probabilities alone cannot fit a device (a huge seq_len)."""
  import jax
  if config.model.attention_kernel in ('cudnn', 'splash') or (
      config.model.attention_kernel == 'auto' and jax.default_backend() != 'cpu'):
    return  # flash kernels never hold [T, T]
  have = parallel.device_memory_bytes()
  need = attention_bytes(config, num_devices)
  if have and need > have:
    m, d, t = config.model, config.data, config.train
    raise ConfigError(
        f'config.data.seq_len={d.seq_len} with train.batch_size={t.batch_size} needs at least {_gib(need)} per '
        f'device for the attention probabilities alone ({m.num_heads} heads × {d.seq_len}² float32, '
        f'{m.num_layers if m.remat == "none" else 1} layer(s) kept for the backward pass), more than the '
        f'{_gib(have)} a device has here; lower data.seq_len or train.batch_size, or raise '
        f'train.micro_batches or set model.remat=full.')


def _validate_sample(config: ml_collections.ConfigDict, max_len: int) -> None:
  """ConfigError for decoding settings that cannot run (``generation.api.check`` says which)."""
  s = config.sample
  _one_of('sample.early_stopping', str(s.early_stopping).lower(), ('true', 'false', 'never'))
  if not (s.prompt or s.eval_prompts):
    return
  if config.model.kind not in ('decoder', 'encoder_decoder'):
    raise ConfigError(f'config.sample.prompt / eval_prompts decode text, which model.kind={config.model.kind!r} '
                      'does not; leave them empty.')
  from llm_jax.generation import api
  from llm_jax.generation import text
  settings = api.Settings(**text.config_settings(s))
  try:
    api.check(max_len, (1, 1), settings)
  except ValueError as e:
    raise ConfigError(f'config.sample: {e}') from None


def _validate_seq2seq(config: ml_collections.ConfigDict) -> None:
  """ConfigError for settings of the encoder-decoder kind that cannot run, or that other kinds do not have."""
  m, d, t, e = config.model, config.data, config.train, config.eval
  seq2seq = m.kind == 'encoder_decoder'
  if not 0 <= t.label_smoothing < 1:
    raise ConfigError(f'config.train.label_smoothing={t.label_smoothing} must be in [0, 1) (Vaswani et al.: 0.1).')
  if t.label_smoothing and t.loss_chunk_size:
    raise ConfigError('config.train.label_smoothing has no chunked form; set config.train.loss_chunk_size=0 '
                      'or label_smoothing=0.')
  if t.label_smoothing and not seq2seq and m.kind != 'decoder':
    raise ConfigError(f'config.train.label_smoothing is for token targets; model.kind={m.kind!r} does not take it.')
  if d.target_len != -1 and d.target_len < 1:
    raise ConfigError(f'config.data.target_len={d.target_len} must be >= 1 (or -1: data.seq_len).')
  if m.num_decoder_layers != -1 and (not seq2seq or m.num_decoder_layers < 1):
    raise ConfigError(f'config.model.num_decoder_layers={m.num_decoder_layers}: set it >= 1 for '
                      f'model.kind=encoder_decoder, and -1 for model.kind={m.kind!r}.' if seq2seq else
                      f'config.model.num_decoder_layers is for model.kind=encoder_decoder; model.kind={m.kind!r} '
                      'has num_layers only (leave it -1).')
  if e.bleu_examples < 0 or e.num_beams < 1:
    raise ConfigError(f'config.eval.bleu_examples={e.bleu_examples} must be >= 0 and eval.num_beams={e.num_beams} '
                      '>= 1.')
  if e.bleu_examples and not seq2seq:
    raise ConfigError(f'config.eval.bleu_examples decodes translations, which model.kind={m.kind!r} does not; '
                      'leave it 0.')
  if e.bleu_examples and not d.eval_split:
    raise ConfigError('config.eval.bleu_examples needs config.data.eval_split; set one or bleu_examples=0.')


def _validate_checkpoint(config: ml_collections.ConfigDict) -> None:
  c = config.checkpoint
  _one_of('checkpoint.keep_best_mode', c.keep_best_mode, ('min', 'max'))
  if c.keep_best < 0:
    raise ConfigError(f'config.checkpoint.keep_best={c.keep_best} must be >= 0 (0: off).')
  if not c.keep_best:
    return
  if c.keep_best_metric.startswith('eval_') and not config.data.eval_split:
    raise ConfigError(f'config.checkpoint.keep_best ranks by {c.keep_best_metric}, but config.data.eval_split is '
                      'empty; set an eval split or checkpoint.keep_best=0.')
  every = config.eval.every_steps
  if not every or c.every_steps % every:
    raise ConfigError(f'config.checkpoint.keep_best needs {c.keep_best_metric} at every save, but '
                      f'checkpoint.every_steps={c.every_steps} is not a multiple of eval.every_steps={every}; '
                      f'make it one.')


def remat_names(model: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.model.remat_names ('qkv,attn_context') as a tuple of names."""
  return tuple(n.strip() for n in model.remat_names.split(',') if n.strip())


def model_config(config: ml_collections.ConfigDict, vocab_size: int, **overrides) -> layers.TransformerConfig:
  """The model's frozen dataclass from the experiment config (after ``validate``)."""
  m = config.model
  if m.vocab_size != -1 and m.vocab_size < vocab_size:
    raise ConfigError(f'config.model.vocab_size={m.vocab_size} is smaller than the tokenizer, which has {vocab_size} '
                      f'ids; set --config.model.vocab_size=-1 (the tokenizer\'s size) or a size >= {vocab_size}.')
  fields = dict(
      vocab_size=vocab_size if m.vocab_size == -1 else m.vocab_size,
      num_layers=m.num_layers,
      num_decoder_layers=m.num_layers if m.num_decoder_layers == -1 else m.num_decoder_layers,
      num_heads=m.num_heads,
      num_kv_heads=m.num_heads if m.num_kv_heads == -1 else m.num_kv_heads,
      emb_dim=m.emb_dim,
      head_dim=m.head_dim if m.head_dim != -1 else m.emb_dim // m.num_heads,
      mlp_dim=m.mlp_dim if m.mlp_dim != -1 else 4 * m.emb_dim,
      max_len=m.max_len if m.max_len != -1 else default_max_len(config),
      dropout_rate=m.dropout_rate,
      attention_dropout_rate=m.attention_dropout_rate,
      pos_encoding=m.pos_encoding,
      rope_theta=m.rope_theta,
      relative_buckets=m.relative_buckets,
      relative_max_distance=m.relative_max_distance,
      attention_scale=m.attention_scale,
      rescale_output=m.rescale_output,
      mlp_activation=m.mlp_activation,
      norm=m.norm,
      norm_placement=m.norm_placement,
      norm_eps=m.norm_eps,
      embed_norm=m.embed_norm,
      embed_scale=m.embed_scale,
      type_vocab_size=m.type_vocab_size,
      head=m.head,
      num_classes=m.num_classes,
      causal=m.kind == 'decoder',
      use_bias=m.use_bias,
      tie_embeddings=m.tie_embeddings,
      attention_kernel=m.attention_kernel,
      attention_block=m.attention_block,
      dtype=DTYPES[m.dtype],
      remat=m.remat,
      remat_names=remat_names(m),
      scan_layers=m.scan_layers,
      init_std=m.init_std,
      init_scheme=m.init_scheme,
  )
  fields.update(overrides)
  return layers.TransformerConfig(**fields)


def default_max_len(config: ml_collections.ConfigDict) -> int:
  """model.max_len when it is -1: data.seq_len; an encoder_decoder's the longer of the source and the
  decoder's start token + target, so that decoding a whole target fits its positions."""
  if config.model.kind == 'encoder_decoder':
    return max(config.data.seq_len, target_len(config) + 1)
  return config.data.seq_len


def target_len(config: ml_collections.ConfigDict) -> int:
  """Target tokens per row of an encoder_decoder (config.data.target_len, -1: seq_len); seq_len otherwise."""
  d = config.data
  return d.seq_len if d.target_len == -1 else d.target_len


def from_file(path: str, **overrides) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file, locked, with dotted-key overrides applied.

  ``from_file('configs/default.py', **{'train.steps': 10})`` is what
  ``--config=configs/default.py --config.train.steps=10`` gives on the command line.
  """
  import importlib.util
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.lock()
  for key, value in overrides.items():
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError):
      raise ConfigError(unknown_key_message(config, key)) from None
  return config


def unknown_key_message(config: ml_collections.ConfigDict, key: str) -> str:
  """'config.a.b does not exist; did you mean config.a.c?' (closest existing key)."""
  import difflib
  known = list(flat_keys(config))
  close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
  hint = f'did you mean config.{close[0]}?' if close else 'see the config file for the keys that exist.'
  return f'config.{key} does not exist; {hint}'


def flat_keys(config, prefix=''):
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from flat_keys(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}'
