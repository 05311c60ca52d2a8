"""Text generation for every model kind that generates, in one compiled loop.

  from llm_jax import generation
  out = generation.decode(kind, params, prompt, lengths=lengths, max_new_tokens=50, num_beams=5)
  sequences = generation.generate(model, input_ids, max_length=50, num_beams=5, early_stopping=True)

``search`` holds the search functions (``sample``: greedy, temperature, top-k, top-p;
``beam_search``), which see the model only through ``kinds.Decoding``: the logits after
the prompt, a cache, and ``tokens_to_logits(ids, cache)``. A kind that generates supplies
that adapter (``start_decoding``: the decoder prefills its KV cache). ``api`` turns
prompts and settings into a call of the right search (``decode``, llm_jax's names) and
mirrors Hugging Face's ``generate``. ``reference`` decodes without a cache, the check
and the baseline of the cached path.
"""

from llm_jax.generation.api import GenerateOutput, Generated, Settings, decode, generate, left_padded
from llm_jax.generation.search import BeamOutput, SampleOutput, beam_search, sample, sample_logits

__all__ = ['BeamOutput', 'GenerateOutput', 'Generated', 'SampleOutput', 'Settings', 'beam_search', 'decode',
           'generate', 'left_padded', 'sample', 'sample_logits']
