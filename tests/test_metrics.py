"""Metric writers: metrics.jsonl and TensorBoard events, written synchronously, trimmed on resume."""

import glob
import os
import struct

from tensorboardX.proto.event_pb2 import Event

from gptjax.metrics import MetricsWriter, read_jsonl


def read_events(workdir):
  """Every event of every TensorBoard file in WORKDIR/tensorboard, file by file (TFRecord framing:
  length, its CRC, the record, its CRC)."""
  files = []
  for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events*'))):
    data, events, i = open(path, 'rb').read(), [], 0
    while i < len(data):
      (length,) = struct.unpack('<Q', data[i:i + 8])
      event = Event()
      event.ParseFromString(data[i + 12:i + 12 + length])
      events.append(event)
      i += 12 + length + 4
    files.append(events)
  return files


def scalars(events):
  return [(e.step, v.tag, round(v.simple_value, 6)) for e in events for v in e.summary.value]


def test_records_reach_both_files_at_once_and_a_resume_trims_past_the_checkpoint(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(10, train_loss=2.5, lr=0.001)
  # Before close: both files already hold the record (a crash right after loses nothing written).
  assert read_jsonl(str(tmp_path / 'metrics.jsonl')) == [{'step': 10, 'train_loss': 2.5, 'lr': 0.001}]
  assert scalars(read_events(str(tmp_path))[0]) == [(10, 'train_loss', 2.5), (10, 'lr', 0.001)]
  writer.write(20, train_loss=2.0)
  writer.write(30, train_loss=1.5)  # written after the checkpoint at 20, by a run then killed
  writer.close()

  with open(tmp_path / 'metrics.jsonl') as f:
    before = f.read()
  resumed = MetricsWriter(str(tmp_path), resume_step=20)
  assert [r['step'] for r in read_jsonl(str(tmp_path / 'metrics.jsonl'))] == [10, 20]  # 30 dropped
  resumed.write(30, train_loss=1.4)
  resumed.close()
  assert [(r['step'], r['train_loss']) for r in read_jsonl(str(tmp_path / 'metrics.jsonl'))] == \
      [(10, 2.5), (20, 2.0), (30, 1.4)]
  assert before.startswith(''.join(open(tmp_path / 'metrics.jsonl').read().splitlines(True)[:2]))
  first, second = read_events(str(tmp_path))
  # The resumed file starts with a SessionLog START at step 21: TensorBoard then hides the earlier
  # file's events from step 21 on (the dropped step 30), as tensorboardX's purge_step does.
  start = [e for e in second if e.HasField('session_log')]
  assert [(e.step, e.session_log.status) for e in start] == [(21, start[0].session_log.START)]
  assert scalars(second) == [(30, 'train_loss', 1.4)]


def test_a_finished_log_is_not_rewritten(tmp_path):
  writer = MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write(10, train_loss=2.5)
  writer.close()
  stamp = os.stat(tmp_path / 'metrics.jsonl').st_mtime_ns
  MetricsWriter(str(tmp_path), resume_step=10, tensorboard=False).close()
  assert os.stat(tmp_path / 'metrics.jsonl').st_mtime_ns == stamp  # nothing to drop: not touched
