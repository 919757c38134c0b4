"""Sampling text from a trained run: load its checkpoint and tokenizer, then `decode.generate`.

Run: python -m gptjax.sample --workdir=runs/shakespeare_char --prompt="ROMEO:" --max_new_tokens=50
"""

from __future__ import annotations

import jax

from gptjax import decode
from gptjax.errors import GptjaxError
from gptjax.run import load_run  # noqa: F401  (re-exported: gptjax.sample.load_run)


def sample_from_workdir(workdir: str, prompt: str, *, max_new_tokens: int | None = None, temperature: float = 0.8,
                        top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1,
                        stop: str = '', step: int | None = None) -> list[str]:
  """num_samples continuations of prompt (the prompt itself not included), cut at `stop` if given.

  max_new_tokens=None generates up to the end of the model's context (block_size positions); more
  is fine: a sample that fills the context keeps its last block_size // 2 tokens and goes on.
  """
  if not prompt:
    raise GptjaxError('the prompt is empty; give at least one character with --prompt')
  if num_samples < 1:
    raise GptjaxError(f'num_samples={num_samples} must be >= 1')
  # Cheap argument checks before loading anything.
  if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
    raise GptjaxError(f'max_new_tokens={max_new_tokens} must be an integer >= 1')
  params, model_config, tokenizer, _ = load_run(workdir, step)
  if not model_config.causal:
    raise GptjaxError(f'{workdir} is a masked-LM run (bidirectional): it fills in masked text rather than '
                      f'continuing it; use python -m gptjax.fill --workdir={workdir} --text="...[MASK]..."')
  ids = tokenizer.encode(prompt)
  if max_new_tokens is None:
    if len(ids) >= model_config.block_size:
      raise GptjaxError(f'the prompt ({len(ids)} tokens) fills the {model_config.block_size} positions the '
                        'model supports, leaving no room to generate; shorten it')
    max_new_tokens = model_config.block_size - len(ids)
  stop_ids = tokenizer.encode(stop) if stop else []
  result = decode.generate(
      params, model_config, [ids] * num_samples, jax.random.PRNGKey(seed), max_new_tokens=max_new_tokens,
      temperature=temperature, top_k=top_k, top_p=top_p, real_vocab_size=tokenizer.vocab_size,
      stop_tokens=tuple(stop_ids) if len(stop_ids) == 1 else ())
  tokens, lengths = jax.device_get((result.tokens, result.lengths))
  texts = [tokenizer.decode(row[:n]) for row, n in zip(tokens, lengths)]
  if stop:
    texts = [t.split(stop, 1)[0] for t in texts]
  return texts


def main():
  """python -m gptjax.sample --workdir=DIR [--prompt=TEXT] [sampling flags]"""
  from absl import flags

  from gptjax import cli, cpu

  flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/ and tokenizer.json.')
  flags.DEFINE_string('prompt', '\n', 'Text to continue.')
  flags.DEFINE_integer('max_new_tokens', None,
                       "Tokens to generate per sample (default: up to the end of the model's context; "
                       'past it, a sample keeps its last block_size // 2 tokens and goes on).')
  flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0 = greedy.')
  flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens (0 = all).')
  flags.DEFINE_float('top_p', 1.0, 'Keep the smallest set of tokens whose probability reaches p.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer('num_samples', 1, 'Independent samples, generated as one batch.')
  flags.DEFINE_string('stop', '', 'Stop a sample at this text (e.g. "\\n"); it is not printed.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to load (default: the latest).')
  flags.DEFINE_bool('continuation_only', False, 'Print only the generated text, not the prompt before it.')
  cli.define_common()
  cpu.define_flag()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    if not f.workdir:
      raise GptjaxError('--workdir is required: the run directory to sample from')
    prompt = cli.unescape(f.prompt)
    # Before JAX starts: one XLA CPU device per core where the samples split over them, so that
    # decode.generate runs groups of rows side by side (quietly: stdout is the samples).
    cpu.configure(batch_size=f.num_samples if f.num_samples > 0 else 0, auto=f.cpu_auto, log=lambda line: None)
    texts = sample_from_workdir(
        f.workdir, prompt=prompt, max_new_tokens=f.max_new_tokens,
        temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed,
        num_samples=f.num_samples, stop=cli.unescape(f.stop), step=f.step)
    for i, text in enumerate(texts):
      if len(texts) > 1:
        print(f'--- sample {i}')
      print(text if f.continuation_only else prompt + text)

  cli.run(run)


if __name__ == '__main__':
  main()
