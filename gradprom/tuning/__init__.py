"""Ray Tune + Optuna hyperparameter search over GradProm runs (`gradprom tune`).

space.py (the `tune:` section and the search space), trainable.py (one trial = one run), job.py (the Tuner:
OptunaSearch + ASHA), study.py (the Optuna study in <exp>/optuna.db), resume.py (--resume from that study and
the trial tables, never from Ray's pickles), quiet.py (console output), callback.py (live trials table),
results.py (trials/pareto/best configs), report.py (`gradprom tune report`), job_entry.py (the script for
`ray submit`), cli.py.
"""
