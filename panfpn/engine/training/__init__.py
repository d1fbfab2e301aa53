"""What the training job (:mod:`panfpn.engine.train_run`) uses: checkpoints and resume, the run-folder lock,
the solver, the metrics files and log lines, and the job wrapper tools/train.py calls."""
