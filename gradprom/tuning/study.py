"""The search's Optuna study, kept in `<experiment>/optuna.db` (SQLite through Optuna's RDBStorage).

The study is the searcher's whole state: every sampled point, its per-epoch values, its final value and state.
It is plain SQL rows and JSON, never a pickle, so `--resume` rebuilds the search from it (see resume.py) instead
of unpickling Ray's saved searcher, and `optuna-dashboard sqlite:///<experiment>/optuna.db` or
`optuna.load_study(study_name=..., storage=...)` open it (the name and URL are in run.json).

Ray's `OptunaSearch` already opens a study by `study_name` + `storage` with `load_if_exists=True`. The subclass
below adds what a resumable, readable study needs: each Optuna trial names its Tune trial (user attribute
`ray_trial_id`, the `trials/<id>/` run directory), and a trial that ASHA stopped before `max_epochs` is told as
PRUNED (Optuna then keeps its last per-epoch value) rather than as a COMPLETE trial with an early epoch's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STUDY_FILE = "optuna.db"
RAY_TRIAL_ATTR = "ray_trial_id"


def storage_url(exp: Path) -> str:
    """The SQLAlchemy URL of the experiment's study database (absolute path: four slashes)."""
    return f"sqlite:///{(Path(exp) / STUDY_FILE).resolve()}"


def open_storage(exp: Path):
    """Optuna's RDB storage on `<exp>/optuna.db` (created on first use)."""
    import optuna

    return optuna.storages.RDBStorage(storage_url(exp))


def load_study(exp: Path, study_name: str, storage=None):
    """The experiment's study, or None when the database or the study does not exist yet."""
    import optuna

    if not (Path(exp) / STUDY_FILE).is_file():
        return None
    try:
        return optuna.load_study(study_name=study_name, storage=storage or open_storage(exp))
    except KeyError:  # Optuna's "no such study"
        return None


def finished_ray_trials(study) -> set[str]:
    """Tune trial ids whose Optuna trial the searcher has closed (COMPLETE, PRUNED or FAIL)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return {t.user_attrs[RAY_TRIAL_ATTR] for t in study.get_trials(deepcopy=False, states=done)
            if RAY_TRIAL_ATTR in t.user_attrs}


def requeue_interrupted(study, storage) -> int:
    """Close the trials an interruption left RUNNING (FAIL) and enqueue their points again, so the resumed search
    evaluates the same values first (as Ray's own resume of unfinished trials did); returns how many."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                       TrialState.FAIL)
    return len(running)


def make_optuna_search(*, storage, study_name: str, max_epochs: int, **kwargs: Any):
    """Ray's OptunaSearch on `storage`/`study_name` that records Tune trial ids and prunes ASHA-stopped trials."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class StoredOptunaSearch(OptunaSearch):
        """OptunaSearch whose study names each trial's Tune trial and marks early-stopped trials PRUNED."""

        def suggest(self, trial_id: str):
            params = super().suggest(trial_id)
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
            return params

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self._reported_steps: dict[str, int | None] = {}  # trial id -> the last epoch told to Optuna

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            super().on_trial_result(trial_id, result)
            self._reported_steps[trial_id] = result.get("training_iteration")

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            stopped_early = (not error and result is not None and trial_id not in self._completed_trials
                             and trial_id in self._ot_trials and result.get("training_iteration", 0) < max_epochs)
            if not stopped_early:
                return super().on_trial_complete(trial_id, result=result, error=error)
            # ASHA ended it between epochs: Optuna's PRUNED state, whose value is the last per-epoch value. Tune
            # hands the result that made ASHA stop it to on_trial_complete only, so report it here first.
            ot_trial, step = self._ot_trials[trial_id], result.get("training_iteration")
            one = not isinstance(self.metric, list)  # Optuna keeps no per-epoch values for several objectives
            if one and result.get(self.metric) is not None and self._reported_steps.get(trial_id) != step:
                ot_trial.report(result[self.metric], step)
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)

    return StoredOptunaSearch(storage=storage, study_name=study_name, **kwargs)
