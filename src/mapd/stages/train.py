"""Stage `train`, as the pipeline sees it: fine-tune the student (see `mapd.train`).

Reads  dataset/train.jsonl
Writes student/ (adapter or model, checkpoints, train_log.jsonl, manifest.json)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapd.config import RunConfig

INPUTS = ["dataset/train.jsonl"]
OUTPUTS = ["student/manifest.json"]


def settings(cfg: RunConfig) -> dict[str, Any]:
    from mapd.train.stage import train_settings

    return train_settings(cfg)


def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    from mapd.train import run as train

    return train(cfg, run_dir)
