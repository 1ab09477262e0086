"""Run metrics: JSONL (one object per line, appended) and TensorBoard summaries, plus the
console progress line (step, loss, learning rate, tokens/s, ETA)."""

import sys
import tempfile
import time

from ft_scaling import files


class MetricsWriter:
    """Appends metrics to MODEL_DIR/metrics.jsonl and TensorBoard (process 0 only).

    A resumed run passes the step it restored: rows logged after it (the steps a kill or a
    failed save lost, which the run trains again) and a line a kill cut off are removed, and
    a row at that step already logged is not logged again, so the file equals an
    uninterrupted run's line for line.
    """

    def __init__(
        self,
        model_dir: str,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        self._path = files.path(model_dir) / "metrics.jsonl"
        self._logged: set[tuple[int, str]] = set()  # (step, split) rows at resume_step
        if enabled and resume_step is not None:
            kept = files.truncate_jsonl(self._path, lambda row: _step(row) <= resume_step)
            self._logged = {(_step(r), r.get("split")) for r in kept if _step(r) == resume_step}
        self._tb, self._tb_local, self._tb_remote = None, None, None
        if enabled and tensorboard:
            import tensorflow as tf  # only for summaries; already loaded by seqio

            self._tb_local = str(files.path(model_dir) / "tensorboard")
            if files.is_remote(model_dir):
                # TF would write gs:// with its own GCS client, around files.py: its event files
                # are written locally and uploaded as objects at each flush.
                self._tb_remote = self._tb_local
                self._tb_local = tempfile.mkdtemp(prefix="ft_scaling_tensorboard_")
            self._tb = tf.summary.create_file_writer(self._tb_local)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled or (int(step), split) in self._logged:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        files.append_jsonl(self._path, row)
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=int(step)):
                for key, value in metrics.items():
                    tf.summary.scalar(f"{split}/{key}", float(value))
            self._tb.flush()
            if self._tb_remote is not None:
                files.upload_directory(self._tb_local, self._tb_remote)


def _step(row: dict) -> int:
    step = row.get("step")
    return step if isinstance(step, int) else 0


def read_jsonl(path: str) -> list[dict]:
    """The rows of a metrics.jsonl (none before the first write)."""
    return files.read_jsonl(path)


class Progress:
    """Prints a progress line with loss, learning rate, throughput and ETA to stderr."""

    def __init__(self, total_steps: int, start_step: int, tokens_per_step: int, prefix: str = ""):
        self.total, self.tokens_per_step, self.prefix = total_steps, tokens_per_step, prefix
        self._last_time, self._last_step = time.time(), start_step

    def update(self, step: int, loss: float, learning_rate: float, enabled: bool = True) -> dict:
        now = time.time()
        steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
        tokens_per_s = steps_per_s * self.tokens_per_step
        eta = (self.total - step) / max(steps_per_s, 1e-9)
        self._last_time, self._last_step = now, step
        if enabled:
            sys.stderr.write(
                f"{self.prefix}step {step}/{self.total} loss {loss:.4f} lr {learning_rate:.3g} "
                f"{tokens_per_s:,.0f} tok/s ETA {_duration(eta)}\n"
            )
        return {"tokens_per_s": tokens_per_s, "steps_per_s": steps_per_s}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
