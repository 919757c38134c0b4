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
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}
    with _write_errors(self.path):
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()
    if self._tb is not None:
      from tensorboardX.proto.event_pb2 import Event
      from tensorboardX.summary import scalar
      with _write_errors(self._tb_dir):
        for k, v in values.items():
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
  """Training FLOPs per token (forward + backward = 3x forward), as in the PaLM paper's appendix
  and nanoGPT: 6 N for the weight matmuls (N counts the LM head, not the embedding lookups) plus
  12 * n_layer * seq_len * n_embd for attention scores and values (no saving for the causal mask).
  """
  c = config
  n_matmul = c.n_layer * (c.n_embd * (c.n_head + 2 * c.kv_heads) * c.head_dim + c.n_embd ** 2
                          + 8 * c.n_embd ** 2) + c.n_embd * c.vocab_size
  return 6.0 * n_matmul + 12.0 * c.n_layer * seq_len * c.n_embd


def mfu(tokens_per_sec: float, config: GPTConfig, seq_len: int, peak_flops: float) -> float:
  """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak (0 if unknown)."""
  if not peak_flops or math.isnan(tokens_per_sec):
    return 0.0
  return tokens_per_sec * flops_per_token(config, seq_len) / peak_flops
