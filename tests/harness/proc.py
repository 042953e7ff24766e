"""Small helpers for the programs that tests start."""

import signal
import subprocess


def stop_process(proc, timeout=10):
    """Stop a subprocess.Popen that we started: SIGTERM, then SIGKILL."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
