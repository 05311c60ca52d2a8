"""Reference decoders from ``transformers`` (GPT-2, BLOOM, Llama, Mistral; PyTorch, CPU, float32), the
llm_jax models written out by hand to match them, small tokenizers trained here, and the
left-padded batches both are compared on.

As in ``refs``, the random weights are large (init std 0.5; every norm scale and bias,
the 1-D parameters, moved off 1 and 0) so that a wrong split of a fused tensor, a wrong
rotation pairing or a wrong activation changes the argmax.
"""

import json
import os

import numpy as np
import torch
import transformers

from llm_jax.models import kinds
from llm_jax.models.layers import TransformerConfig
from tests.convert import runs

VOCAB, LAYERS, POSITIONS = 300, 2, 64
# tokenizer style -> its special tokens (ids 0, 1, ...) and its end-of-text token
SPECIALS = {'gpt2': ['<|endoftext|>'], 'bloom': ['<unk>', '<s>', '</s>', '<pad>'],
            'llama': ['<unk>', '<s>', '</s>'], 'llama3': ['<|begin_of_text|>', '<pad>', '<|end_of_text|>']}
EOS_TOKEN = {'gpt2': '<|endoftext|>', 'bloom': '</s>', 'llama': '</s>', 'llama3': '<|end_of_text|>'}
EOS = {style: SPECIALS[style].index(token) for style, token in EOS_TOKEN.items()}

HF_CONFIGS = {
    'gpt2': lambda **o: transformers.GPT2Config(**{**dict(
        vocab_size=VOCAB, n_embd=64, n_layer=LAYERS, n_head=4, n_inner=96, n_positions=POSITIONS,
        activation_function='gelu_new', layer_norm_epsilon=1e-5, initializer_range=0.5, bos_token_id=EOS['gpt2'],
        eos_token_id=EOS['gpt2']), **o}),
    # 6 heads: ALiBi's slopes for a head count that is not a power of two
    'bloom': lambda **o: transformers.BloomConfig(**{**dict(
        vocab_size=VOCAB, hidden_size=96, n_layer=LAYERS, n_head=6, layer_norm_epsilon=1e-5, initializer_range=0.5,
        bos_token_id=1, eos_token_id=EOS['bloom']), **o}),
    'llama': lambda **o: transformers.LlamaConfig(**{**dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=POSITIONS, rms_norm_eps=1e-5, rope_theta=500.0,
        initializer_range=0.5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS['llama']), **o}),
    # tied, a head_dim of its own (not hidden_size / heads), no sliding window
    'mistral': lambda **o: transformers.MistralConfig(**{**dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=POSITIONS, rms_norm_eps=1e-6, rope_theta=10000.0,
        initializer_range=0.5, tie_word_embeddings=True, sliding_window=None, bos_token_id=1,
        eos_token_id=EOS['llama']), **o}),
}
LM_CLASSES = {'gpt2': transformers.GPT2LMHeadModel, 'bloom': transformers.BloomForCausalLM,
              'llama': transformers.LlamaForCausalLM, 'mistral': transformers.MistralForCausalLM}


def random_model(family: str, directory, seed: int = 0, cls=None, tokenizer_style: str = '', **overrides):
  """A ``family`` causal LM (or ``cls``) with large random weights saved as safetensors in ``directory``,
  with a ``tokenizer`` of ``tokenizer_style`` beside it when given."""
  torch.manual_seed(seed)
  model = (cls or LM_CLASSES[family])(HF_CONFIGS[family](**overrides)).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(str(directory), safe_serialization=True)
  if tokenizer_style:
    tokenizer(tokenizer_style).save(os.path.join(str(directory), 'tokenizer.json'))
  return model


def llm_jax_cfg(family: str, hf, **overrides) -> TransformerConfig:
  """The llm_jax decoder that ``hf`` is, written out field by field (not through llm_jax.convert)."""
  if family == 'gpt2':
    fields = dict(num_layers=hf.n_layer, num_heads=hf.n_head, num_kv_heads=hf.n_head, emb_dim=hf.n_embd,
                  head_dim=hf.n_embd // hf.n_head, mlp_dim=hf.n_inner, max_len=hf.n_positions,
                  norm_eps=hf.layer_norm_epsilon, mlp_activation='gelu_tanh', pos_encoding='learned',
                  norm='layernorm', use_bias=True, embed_norm=False, tie_embeddings=True)
  elif family == 'bloom':
    fields = dict(num_layers=hf.n_layer, num_heads=hf.n_head, num_kv_heads=hf.n_head, emb_dim=hf.hidden_size,
                  head_dim=hf.hidden_size // hf.n_head, mlp_dim=4 * hf.hidden_size, max_len=2048,
                  norm_eps=hf.layer_norm_epsilon, mlp_activation='gelu_tanh', pos_encoding='alibi',
                  norm='layernorm', use_bias=True, embed_norm=True, tie_embeddings=True)
  else:
    fields = dict(num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
                  num_kv_heads=hf.num_key_value_heads, emb_dim=hf.hidden_size, head_dim=hf.head_dim,
                  mlp_dim=hf.intermediate_size, max_len=hf.max_position_embeddings, norm_eps=hf.rms_norm_eps,
                  mlp_activation='swiglu', pos_encoding='rope', rope_theta=hf.rope_parameters['rope_theta'],
                  norm='rmsnorm', use_bias=False, embed_norm=False, tie_embeddings=hf.tie_word_embeddings)
  fields = dict(fields, vocab_size=hf.vocab_size, norm_placement='pre', causal=True, head='lm',
                attention_kernel='xla', **overrides)
  return TransformerConfig(**fields)


def build(family: str, hf, **overrides):
  kind = kinds.build('decoder', llm_jax_cfg(family, hf, **overrides))
  from tests.convert import refs
  return kind, refs.fresh(kind)


def left_padded(seed: int = 0, batch: int = 4, length: int = 12, vocab: int = VOCAB):
  """(ids, mask) [B, T]: prompts of different lengths, padded with 0 on the left."""
  rng = np.random.default_rng(seed)
  lengths = np.linspace(length, 2, batch).astype(int)
  mask = (np.arange(length)[None] >= (length - lengths)[:, None]).astype(np.int64)
  return rng.integers(3, vocab, (batch, length)) * mask, mask


def positions(mask):
  """0, 1, ... from each row's first real token (0 on the padding before it)."""
  return np.clip(np.cumsum(mask, axis=1) - 1, 0, None)


def ours(kind, params, ids, mask):
  """llm_jax's logits [B, T, V]: segment id 1 on tokens, 0 on padding."""
  out = kind.module.apply({'params': params}, ids.astype(np.int32), positions(mask).astype(np.int32),
                          mask.astype(np.int32))
  return np.asarray(out)


def theirs(model, ids, mask):
  """transformers' logits [B, T, V] with the attention mask and (where the model takes them) positions."""
  inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  if not isinstance(model, transformers.BloomForCausalLM):  # ALiBi reads positions off the mask
    inputs['position_ids'] = torch.tensor(positions(mask))
  with torch.no_grad():
    return model(**inputs).logits.numpy()


def tokenizer(style: str):
  """A ``tokenizers`` BPE of at most ``VOCAB`` ids trained on a few sentences, ``SPECIALS[style]``
  first. 'gpt2' and 'bloom': the byte-level form (pre-tokenizer and decoder) of GPT-2 and BLOOM;
  'llama': Llama 1/2's (Metaspace, byte fallback); 'llama3': byte-level with Llama 3's names."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  text = ' '.join(runs.WORDS)
  corpus = [text, text.title(), text.upper(), 'Hello, world! 0123456789 ... ' * 3]
  specials = list(SPECIALS[style])
  if style == 'llama':
    tok = Tokenizer(models.BPE(unk_token='<unk>', byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace('\u2581', ' '), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(' ', 1, 0)])
    specials += [f'<0x{i:02X}>' for i in range(256)]
    alphabet, corpus = [], corpus[:1]  # 259 specials leave room for a lower-case alphabet and a few merges
  else:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, initial_alphabet=alphabet,
                                show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  if style == 'llama':  # the byte pieces are ordinary tokens, as in Llama's tokenizer.json, not added specials
    spec = json.loads(tok.to_str())
    spec['added_tokens'] = spec['added_tokens'][:len(SPECIALS[style])]
    tok = Tokenizer.from_str(json.dumps(spec))
  assert tok.get_vocab_size() <= VOCAB and tok.token_to_id(EOS_TOKEN[style]) == EOS[style]
  return tok
