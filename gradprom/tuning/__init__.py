"""Ray Tune + Optuna hyperparameter search over GradProm runs (`gradprom tune`).

space.py (the `tune:` section and the search space), trainable.py (one trial = one run), job.py (the Tuner:
OptunaSearch + ASHA, restore), callback.py (live trials table), results.py (trials/pareto/best configs),
report.py (`gradprom tune report`), job_entry.py (the script for `ray submit`), cli.py.
"""
