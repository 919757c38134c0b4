"""Where measurements go: WORKDIR/metrics.jsonl, TensorBoard events, and throughput/MFU arithmetic.

metrics.jsonl has one JSON object per line: `step` plus whichever of train_loss, val_loss, lr,
tokens_per_sec, ... were measured at that step. Each line is written whole and flushed; after a
resume, lines beyond the restored step (written after the last checkpoint) are dropped, so the file
never holds a step twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time

from gptjax.data import atomic_write
from gptjax.errors import os_error, write_remedy
from gptjax.model import GPTConfig


def read_jsonl(path: str) -> list[dict]:
  """The complete lines of a metrics file (a torn last line, cut by a crash, is ignored)."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if not line.endswith('\n'):
        break
      records.append(json.loads(line))
  return records


class MetricsWriter:
  """Appends metric records to metrics.jsonl and, if tensorboardX is installed, TensorBoard events.

  Both are written synchronously in the calling thread and flushed at every record, so a write that
  fails (a full disk) raises GptjaxError here, naming the file; nothing written before is touched.
  """

  def __init__(self, workdir: str, resume_step: int | None = None, tensorboard: bool = True):
    """resume_step: the checkpoint step the run continues from (None: from scratch). Records after
    it were written by the interrupted run past its last checkpoint; the run will write them again."""
    self.path = os.path.join(workdir, 'metrics.jsonl')
    resume_step = -1 if resume_step is None else resume_step
    with _write_errors(self.path):
      if os.path.exists(self.path):
        with open(self.path, encoding='utf-8') as f:
          text = f.read()
        kept = [r for r in read_jsonl(self.path) if r['step'] <= resume_step]
        kept_text = ''.join(json.dumps(r) + '\n' for r in kept)
        if kept_text != text:  # rewrite without the lines past the checkpoint we resume from
          atomic_write(self.path, kept_text)
      self._file = open(self.path, 'a', encoding='utf-8')
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
      except ImportError:
        return
      self._tb_dir = directory = os.path.join(workdir, 'tensorboard')
      with _write_errors(directory):
        os.makedirs(directory, exist_ok=True)
        # The file is named by the second it was made in: a suffix keeps a writer opened in the same
        # second (a quick resume) from truncating the last one's file.
        self._tb = EventsWriter(os.path.join(directory, 'events'), filename_suffix=f'.{time.time_ns()}')
        # TensorBoard drops the events of earlier files past this step (tensorboardX's purge_step).
        self._tb.write_event(Event(step=resume_step + 1, session_log=SessionLog(status=SessionLog.START)))
        self._tb.flush()

  def write(self, step: int, **values) -> None:
    """One line {step, **values}; a value of None (not measurable here, e.g. MFU on a CPU) is null."""
    record = {'step': int(step), **{k: None if v is None else float(v) for k, v in values.items()}}
    with _write_errors(self.path):
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()
    if self._tb is not None:
      from tensorboardX.proto.event_pb2 import Event
      from tensorboardX.summary import scalar
      with _write_errors(self._tb_dir):
        for k, v in values.items():
          if v is not None:
            self._tb.write_event(Event(wall_time=time.time(), step=int(step), summary=scalar(k, float(v))))
        self._tb.flush()

  def close(self) -> None:
    try:
      self._file.close()
    except OSError:  # the flush at close of a file whose last write failed; that failure was reported
      pass
    if self._tb is not None:
      try:
        self._tb.close()
      except OSError:
        pass


@contextlib.contextmanager
def _write_errors(path: str):
  try:
    yield
  except OSError as e:
    raise os_error(e, f'cannot write {path}', write_remedy(e.errno) + '; then run the same command again: it '
                   'resumes from the last checkpoint and rewrites the log from there') from None


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
  """Model FLOPs of one training token (forward + backward = 3x forward), as in the PaLM paper's
  appendix B and nanoGPT: 6 N + 12 * n_layer * seq_len * n_embd.

  6 N: N counts the weights that take part in matmuls, the LM head included and the embedding
  lookups not (GPT-2's MLP: 8 d^2 a layer; SwiGLU's three matrices: 3 d h); a matmul does 2 FLOPs per
  weight per token forward and 4 backward. Norms, RoPE, softmax and the loss are not counted.
  12 L T d: per layer, Q K^T and (softmax) V each do 2 * seq_len * n_embd FLOPs per token forward
  (n_head heads x head_dim = n_embd, whatever n_kv_head is); x3 for forward + backward. The causal
  mask is not subtracted (kernels that skip masked tiles do about half of this).
  Rematerialization's recomputed forward is not counted: this is *model* FLOPs, so MFU compares
  runs that recompute with runs that do not.
  """
  c = config
  attention = c.n_embd * (c.n_head + 2 * c.kv_heads) * c.head_dim + c.n_embd ** 2  # c_attn (q, k, v), c_proj
  mlp = (3 if c.mlp == 'swiglu' else 2) * c.n_embd * c.mlp_width  # c_fc (+ c_gate), c_proj
  n_matmul = c.n_layer * (attention + mlp) + c.n_embd * c.vocab_size
  return 6.0 * n_matmul + 12.0 * c.n_layer * seq_len * c.n_embd


def mfu(tokens_per_sec: float, config: GPTConfig, seq_len: int, peak_flops: float | None) -> float | None:
  """Model FLOPs utilisation: achieved model FLOP/s over the peak of the devices that ran them
  (peak_flops: the sum over devices, see `hardware.peak_flops`). None where the peak is unknown
  (CPUs) or nothing was timed."""
  if not peak_flops or tokens_per_sec is None or not math.isfinite(tokens_per_sec):
    return None
  return tokens_per_sec * flops_per_token(config, seq_len) / peak_flops


def throughput(tokens: int, seconds: float, steps: int, config: GPTConfig, seq_len: int,
               peak_flops: float | None) -> dict:
  """{tokens_per_sec, ms_per_step, mfu} of `steps` steps that processed `tokens` tokens in `seconds`;
  mfu is None where the devices' peak is unknown."""
  tokens_per_sec = tokens / seconds
  return {'tokens_per_sec': tokens_per_sec, 'ms_per_step': 1e3 * seconds / steps,
          'mfu': mfu(tokens_per_sec, config, seq_len, peak_flops)}
