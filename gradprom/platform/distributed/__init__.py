"""Ray Train: the driver (runner.py), the worker (worker.py) on the shared epoch runner, the cluster, the training
split as a Ray Dataset, the gradient reducers and the rank-agreement checks. Importing it does not import Ray."""
