"""Logical axis names and shape letters, declared once for the whole codebase.

Every parameter is annotated with the names below (``nn.with_logical_partitioning``)
and every activation constrained at a block boundary uses the ``ACT_*`` names
(``nn.with_logical_constraint``). ``llm_jax.parallel`` maps each name to mesh axes;
a name used here without a rule there, or a rule for a name used nowhere, is a bug
that ``tests/test_parallel.py`` catches.

Shape letters used in einsum strings and docstrings:
  B batch, T target (query) length, S source (key) length, D model width,
  N query heads, K key/value heads, G query heads per kv head (N // K),
  H head dim, F feed-forward width, V vocabulary, L layers.
"""

# Parameter axes.
VOCAB = 'vocab'
EMBED = 'embed'
MLP = 'mlp'
HEADS = 'heads'
KV_HEADS = 'kv_heads'
KV = 'kv'            # the head dimension H
LAYERS = 'layers'    # the stacked axis that nn.scan adds
POSITION = 'position'  # rows of a learned position table
TOKEN_TYPE = 'token_type'  # rows of the token-type (segment A/B) table
RELATIVE = 'relative'  # rows (buckets) of T5's relative position bias table

# Activation axes.
ACT_BATCH = 'act_batch'
ACT_LEN = 'act_len'
ACT_EMBED = 'act_embed'
ACT_HEADS = 'act_heads'
ACT_KV = 'act_kv'
ACT_MLP = 'act_mlp'
ACT_VOCAB = 'act_vocab'

PARAM_AXES = (VOCAB, EMBED, MLP, HEADS, KV_HEADS, KV, LAYERS, POSITION, TOKEN_TYPE, RELATIVE)
ACTIVATION_AXES = (ACT_BATCH, ACT_LEN, ACT_EMBED, ACT_HEADS, ACT_KV, ACT_MLP, ACT_VOCAB)
ALL_AXES = PARAM_AXES + ACTIVATION_AXES
