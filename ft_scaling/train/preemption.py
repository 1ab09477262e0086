"""Preemption: a Cloud TPU VM (or a scheduler) sends SIGTERM before it takes the machine away.

The loop checks the flag after each step, saves, and returns status 'preempted'; the rerun
resumes from that checkpoint bit-identically.
"""

import signal


class SigtermFlag:
    """Turns SIGTERM (preemption) into a flag the loop checks: save, then stop cleanly."""

    def __init__(self):
        self.set = False
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: preemption is then the caller's business
            pass

    def _handle(self, signum, frame):
        del signum, frame
        self.set = True
