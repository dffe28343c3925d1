"""Transforms for the process-pool tests of audit T, in a module that imports no framework: the pool's workers
import it (a test module would make every worker import torch or TensorFlow)."""

from __future__ import annotations

import os

import numpy as np


def worker_pid(batch: dict) -> dict:
    """Adds ``pid``: the process the transform ran in."""
    batch["pid"] = np.full(len(batch["id"]), os.getpid(), dtype=np.int64)
    return batch
