"""The pipeline stages: exam, teach, review, build (and train, eval, report), run by `mapd run`.

Each stage is `run(cfg, run_dir) -> summary`; it reads earlier stages' files from the run
folder, writes its own atomically, and writes its manifest last.
"""
