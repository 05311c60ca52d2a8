"""Hugging Face weights in and out of llm_jax, one explicit table per model family.

  model = convert.from_pretrained('bert-base-uncased')   # kind, params, tokenizer, report, eos_id
  params, report = convert.load_params('bert-base-uncased', kind, fresh_params)   # into a given model
  convert.export('runs/bert', 'out/bert-hf')   # or: python -m llm_jax.convert --workdir=... --out=...

``load_params`` (``load.py``) is what ``config.init_from`` calls for a model directory
or Hub id; ``export`` (``exporter.py``) writes a run's newest checkpoint as a directory
that ``transformers``' ``from_pretrained`` loads. ``hf.py`` reads and writes the files
(config.json, safetensors, pytorch_model.bin); ``hub.py`` finds a Hub id's directory.

Supported, both ways:

  BERT    ``bert.py``   BertModel, BertForMaskedLM, BertForSequenceClassification,
                        BertForPreTraining                  <-> model.kind 'encoder'
  GPT-2   ``gpt2.py``   GPT2Model, GPT2LMHeadModel           <-> 'decoder' (learned positions)
  BLOOM   ``bloom.py``  BloomModel, BloomForCausalLM         <-> 'decoder' (pos_encoding 'alibi')
  Llama   ``llama.py``  LlamaModel, LlamaForCausalLM         <-> 'decoder' (rope, rmsnorm, swiglu)
  Mistral ``llama.py``  MistralModel, MistralForCausalLM      -> 'decoder' (no sliding window;
                        such a model exports as Llama)

A decoder run is exported as the family whose layout it has (``table.for_export``); one
that fits none gets one line saying, per family, what does not fit. The decoder families
share ``causal.CausalFamily``, which derives the config comparison from ``sizes``.

Adding an architecture is a new table, not new plumbing. In a new module (say
``gpt2.py``), subclass ``table.Family`` under ``@table.register`` and give:

- ``model_type`` (config.json's), ``kind`` (the llm_jax model kind), ``prefix`` and
  ``base_architecture`` (the base model's key prefix, e.g. 'transformer.', and the class
  that has no head), ``architectures`` (class name -> the rule groups its checkpoints
  hold), ``buffers`` (keys that are not parameters) and ``renames`` (old key spellings);
- ``layer_rules()`` and ``other_rules(cfg)``: one ``table.Rule(ours, theirs, transform)`` per
  tensor ('{i}' marks the layer), with a ``table.Transform`` where the layouts differ
  (``LINEAR`` for a torch Linear [out, in], ``HEADS_IN`` / ``HEADS_BIAS`` / ``HEADS_OUT``
  for attention projections split into heads), ``copies`` for tied tensors; a fused
  tensor (GPT-2's c_attn, BLOOM's query_key_value) is one rule whose ``ours`` is a tuple
  of paths and whose transform maps one array to a tuple and back;
- ``mismatches(hf_config, cfg, ...)``: each config.json field against the
  ``TransformerConfig``, as ``table.field(...)`` entries naming the flag that fixes it;
  ``unfit(cfg)``, ``hf_config(cfg, architecture)`` and ``export_architecture(head)`` for
  export;

then add the module to ``table._MODULES`` and test it against ``transformers`` with a
small random model, as tests/convert/ does for BERT. The shape check, the count check
(every tensor consumed or a known buffer), the scanned layout and the shardings come
from the plumbing.
"""

from llm_jax.convert.exporter import export
from llm_jax.convert.load import Pretrained, from_pretrained, load_params

__all__ = ['Pretrained', 'export', 'from_pretrained', 'load_params']
