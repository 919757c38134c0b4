"""gptjax: GPT-style language models in JAX/Flax.

Modules, one concern each: model (the Transformer), kv_cache (the decode cache pytree),
objectives (losses), decode (prefill + lax.scan sampling loop), data (tokenizers, prepared token
files, the stateless batch sampler), train (TrainState, the pure train/eval steps, the loop in
phases), parallel (devices, the pmap and mesh layouts, logical axis rules, multi-host start-up),
checkpoint (orbax), metrics (metrics.jsonl, TensorBoard, MFU), config
(defaults and validation), evaluate (loss, perplexity and bits per byte of a run on any text),
plot (loss curves of runs as a picture), provenance (the code, versions and machine of a run),
hf (GPT-2 weights in and out of Hugging Face's format), pretrained (starting a run from existing
weights), workdir (one training run per workdir: its lock), sweep (sweep files and their points),
sweep_run (points as pinned child processes, --dry_run, --slurm), sweep_summary (a sweep's tables
and plots), scaling (power-law fits). Commands: train, sample, evaluate, plot, convert, sweep.
Design notes: DESIGN.md.
"""

__version__ = '0.1.0'
