"""Benchmark harness: training speed, MFU and memory, reference numerics, decoding, sweeps.

  # training: step time, tokens/s, MFU, compile time, per-device memory of the compiled step
  python -m llm_jax.bench --config=configs/shakespeare_char.py --config.model.dropout_rate=0
  # KV-cache decoding against full recomputation (greedy), batch 1 and 64, 256 new tokens
  python -m llm_jax.bench --config=configs/shakespeare_char.py --mode=decode --config.model.dropout_rate=0
  # per-device memory of the step on 1 device vs fsdp=8 on 8 devices (simulated here)
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m llm_jax.bench \\
      --config=configs/shakespeare_char.py --config.train.batch_size=16 --mode=memory
  # several configs, each in a fresh process, into PREFIX.json and PREFIX.md
  python -m llm_jax.bench --mode=all --sweep_out=/tmp/sweep \\
      --sweep='configs/default.py,configs/shakespeare_char.py:model.dtype=bfloat16;train.micro_batches=2'

``--mode`` is 'train' (default), 'decode', 'all' (both) or 'memory'. The last line
printed is one JSON object; for 'train' its keys are those of ``train.benchmark_training``,
'decode' adds a 'decode' entry (``decode.benchmark_decoding``), 'memory' a 'memory' entry
(``memory.benchmark_memory``).

The package: ``common`` (synthetic data, config overrides, compiled memory), ``train``
(the reference check and the training bench), ``decode``, ``memory``, ``sweep`` (configs
in fresh processes) and ``__main__`` (the command line). Importing the package imports
nothing else, so ``python -m llm_jax.bench`` sets up the host (``hostmem``) before jax loads. The GPU table (GPT-2 124M and 1.3B MFU, Tiny
Shakespeare to 1.47, decoding) is one command: ``experiments/gpu_bench/run.py``.

Reference numerics: before timing, the config trains ``REFERENCE_STEPS`` steps from
one initialization on synthetic batches next to its reference, the same config with
``REFERENCE_SETTINGS`` (plain 'xla' attention, no remat, unrolled layers, one
micro-batch, float32; and ``train.loss_chunk_size=0`` where that key exists), dropout
off in both. If any loss differs by more than ``RTOL_BF16`` (bfloat16 compute) or
``RTOL_FLOAT32`` relatively, the bench prints one line naming the differing keys and
the losses and exits with ``ReferenceMismatch.exit_code`` (6), reporting no figures: a
fast step that computes something else is no result. ``--nocheck_reference`` skips it;
``--reference_rtol`` replaces the tolerance. Decoding refuses the same way (exit 6) when
float32 cached tokens differ from recomputed ones.

Timing: on a shared machine other processes slow both the steps and the peak matmul,
so the bench alternates ``--rounds`` rounds of (``--steps`` timed steps, one peak
measurement) and reports the fastest round's step time against the highest peak.
``compile_s`` is tracing + lowering + XLA compilation of the train step, timed apart
from its first run (``first_step_s``). ``peak_memory_bytes`` is per device, from the
compiled step's ``memory_analysis()``: arguments + outputs + temporaries - aliased
(donated) buffers; None where the backend does not report it.
"""

