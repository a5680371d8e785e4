"""Fine-tune the student on the run's training set: LoRA or full, two-task loss, exact masking.

    from mapd.stages.train import run
    manifest = run(cfg, run_dir)       # reads dataset/train.jsonl, writes student/

Modules: `tokenize` (prompt/target ids and labels), `collate` (dynamic padding),
`trainer` (the Trainer with the two-task loss), `model` (base model, LoRA, merge),
`stage` (the stage itself: resume, manifest, summary).
"""

from mapd.stages.train.stage import run

__all__ = ["run"]
