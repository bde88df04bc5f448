"""The search: what is sampled, what is optimised, how trials run. The `tune:` section of a config file.

A config file for `gradprom tune` is an ordinary run config (the base of every trial) plus an optional `tune:`
section read here; `gradprom train` never sees that section (the exported best configs leave it out).

```yaml
tune:
  objective: psnr            # psnr | ssim | task | pareto (= psnr and the task metric) | a metric name
  num_trials: 8
  max_epochs: 4              # epochs of a trial that ASHA does not stop
  tau: [0.0, 0.5]            # uniform; within [-1, 1] (tau < 0 loses the descent guarantee)
  lambda_e: [0.5, 2.0]       # log-uniform
  lambda_r: [0.01, 1.0]      # log-uniform
  lr: [0.0001, 0.01]         # log-uniform (the enhancer's Adam)
  strategy: null             # e.g. [gradprom, cosine_weighted] to search it too
  granularity: null          # e.g. [global, layer]
  scale: null                # e.g. [none, match]: the gate variants of README "Gate variants under Adam"
  moments: null              # e.g. [shared, separate]
  gate_metric: null          # e.g. [euclidean, preconditioned]
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from gradprom.platform.config import Config, F
from gradprom.platform.errors import ConfigError

# metric -> direction; "task" stands for the task's own metric (accuracy or dice)
METRIC_MODES = {"psnr": "max", "ssim": "max", "task": "max", "accuracy": "max", "auc": "max", "dice": "max",
                "loss_e": "min", "loss_r": "min", "gate_open_rate": "max", "mean_cos": "max"}
TASK_METRICS = {"classification": ("accuracy", "auc"), "segmentation": ("dice",)}
SEARCHED = ("tau", "lambda_e", "lambda_r", "lr")  # the numeric dimensions; CHOICES are categorical
CHOICES = ("strategy", "granularity", "scale", "moments", "gate_metric")  # each a `gradprom` field
BOUNDS = {"tau": (-1.0, 1.0), "lambda_e": (0.0, None), "lambda_r": (0.0, None), "lr": (0.0, None)}


class TuneSpec(BaseModel):
    """The `tune:` section: objective, search space, early stopping and trial resources."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    objective: str = F("psnr", "what to optimise: psnr | ssim | task | pareto (psnr and the task metric together) | "
                       "a metric name (accuracy, auc, dice, loss_e, ...)")
    metrics: list[str] | None = F(None, "an explicit list of objectives (several = multi-objective); overrides "
                                  "`objective`")
    num_trials: int = F(8, "number of trials", ge=1)
    max_epochs: int = F(4, "epochs of a trial that ASHA does not stop", ge=1)
    tau: tuple[float, float] = F((0.0, 0.5), "uniform search range LO,HI of the gate threshold within [-1, 1] "
                                 "(LO == HI fixes it)")
    lambda_e: tuple[float, float] = F((0.5, 2.0), "log-uniform range LO,HI of the enhancement weight")
    lambda_r: tuple[float, float] = F((0.01, 1.0), "log-uniform range LO,HI of the recognition weight")
    lr: tuple[float, float] = F((1e-4, 1e-2), "log-uniform range LO,HI of the enhancer's learning rate")
    strategy: list[str] | None = F(None, "strategies to search too (null: the base config's)")
    granularity: list[Literal["global", "layer"]] | None = F(None, "gate granularities to search (null: the base "
                                                             "config's)")
    scale: list[Literal["none", "match", "clip"]] | None = F(None, "gate variants: magnitude control of g_r to "
                                                             "search (null: the base config's)")
    moments: list[Literal["shared", "separate"]] | None = F(None, "gate variants: Adam moments to search (null: "
                                                            "the base config's)")
    gate_metric: list[Literal["euclidean", "preconditioned"]] | None = F(None, "gate variants: gate metrics to "
                                                                         "search (null: the base config's)")
    sampler: Literal["tpe", "nsga2", "random"] = F("tpe", "Optuna sampler (tpe: multi-objective TPE for several "
                                                   "metrics)")
    seed: int = F(0, "the sampler's seed (recorded in run.json)")
    evaluate_defaults: bool = F(True, "try the paper's defaults (the base config's values, clipped into the "
                                "ranges) first")
    asha: bool = F(True, "ASHA early stopping on per-epoch reports")
    grace_period: int = F(1, "ASHA: epochs before a trial can be stopped", ge=1)
    reduction_factor: float = F(2.0, "ASHA: a trial below the top 1/reduction_factor at a rung stops there", gt=1.0)
    asha_metric: str | None = F(None, "ASHA's metric for a multi-objective search (null: the first objective)")
    max_concurrent: int | None = F(None, "trials at a time (null: as many as the resources allow)", ge=1)
    cpus_per_trial: float = F(1.0, "CPUs per trial", gt=0.0)
    gpus_per_trial: float = F(0.0, "GPUs per trial", ge=0.0)
    workers_per_trial: int = F(0, "0: a trial runs the local loop; N: each trial trains on N Ray Train workers "
                               "(distributed.cpus_per_worker / gpus_per_worker each)", ge=0)
    max_failures: int = F(0, "Tune restarts of a failed trial", ge=0)

    @field_validator("tau", "lambda_e", "lambda_r", "lr", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (v, v)
        if isinstance(v, str):  # "0,0.5" from --set or a flag
            return tuple(float(x) for x in v.split(","))
        return v

    @model_validator(mode="after")
    def _ranges(self) -> TuneSpec:
        for name in SEARCHED:
            lo, hi = getattr(self, name)
            low, high = BOUNDS[name]
            if lo > hi:
                raise ValueError(f"`tune.{name}`: range [{lo:g}, {hi:g}] has low > high")
            if high is not None and (lo < low or hi > high):
                raise ValueError(f"`tune.{name}`: range [{lo:g}, {hi:g}] is outside its bounds; allowed is within "
                                 f"[{low:g}, {high:g}]")
            if high is None and lo <= low:
                raise ValueError(f"`tune.{name}`: range [{lo:g}, {hi:g}] is outside its bounds; values must be "
                                 f"> {low:g} (searched log-uniformly)")
        if self.strategy is not None:
            from gradprom.platform.strategies import STRATEGY_PRESETS, parse_strategy

            if not self.strategy:
                raise ValueError("`tune.strategy`: give at least one strategy, or null to keep the base config's")
            for s in self.strategy:
                if s not in STRATEGY_PRESETS:  # a preset (e.g. gradprom_layer) is expanded by the trial's config
                    parse_strategy(s)  # ConfigError naming the strategy
        for name in CHOICES[1:]:
            if getattr(self, name) is not None and not getattr(self, name):
                raise ValueError(f"`tune.{name}`: give at least one value, or null to keep the base config's")
        return self

    # ---- objectives ----------------------------------------------------------------------------------------
    def objective_metrics(self, task: str) -> list[str]:
        """The metric names optimised, resolved for the task ("task" -> accuracy or dice)."""
        names = list(self.metrics) if self.metrics else (
            ["psnr", "task"] if self.objective == "pareto" else [self.objective])
        out = []
        for n in names:
            allowed = [m for m in METRIC_MODES if m not in TASK_METRICS[_other(task)]]
            if n not in METRIC_MODES or n in TASK_METRICS[_other(task)]:
                raise ConfigError(f"`tune.objective`/`tune.metrics`: unknown metric {n!r} for task {task}; "
                                  f"allowed: pareto, {', '.join(allowed)}.")
            out.append(task_metric(task) if n == "task" else n)
        if len(set(out)) != len(out):
            raise ConfigError(f"`tune.metrics`: {names} names a metric twice.")
        return out

    def modes(self, task: str) -> list[str]:
        """max/min for each objective metric."""
        return [METRIC_MODES[m] for m in self.objective_metrics(task)]

    def scheduler_metric(self, task: str) -> str:
        """The one metric ASHA compares trials on."""
        if self.asha_metric is None:
            return self.objective_metrics(task)[0]
        m = task_metric(task) if self.asha_metric == "task" else self.asha_metric
        if m not in METRIC_MODES or m in TASK_METRICS[_other(task)]:
            raise ConfigError(f"`tune.asha_metric`: unknown metric {self.asha_metric!r} for task {task}.")
        return m


def _other(task: str) -> str:
    return "segmentation" if task == "classification" else "classification"


def build_spec(raw: dict[str, Any] | None, source: str = "tune section") -> TuneSpec:
    """Validate the `tune:` section; errors become one-paragraph ConfigErrors naming the field."""
    try:
        return TuneSpec.model_validate(raw or {})
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                parts.append(f"unknown field `tune.{loc}` (known: {', '.join(TuneSpec.model_fields)})")
            elif loc:
                parts.append(f"`tune.{loc}`: got {e.get('input')!r}; {msg}")
            else:
                parts.append(msg)
        raise ConfigError(f"Invalid tune settings ({source}): " + "; ".join(parts) + ".") from None
    except ConfigError as err:
        raise ConfigError(f"Invalid tune settings ({source}): {err}") from None


# ---- the Tune search space ------------------------------------------------------------------------------
def param_space(spec: TuneSpec) -> dict[str, Any]:
    """Tune search domains: tau uniform, the weights and lr log-uniform, strategy/granularity as choices."""
    from ray import tune

    space: dict[str, Any] = {}
    for name in SEARCHED:
        lo, hi = getattr(spec, name)
        if lo == hi:
            continue  # fixed: set in the base config instead (a zero-width domain is not samplable)
        space[name] = tune.uniform(lo, hi) if name == "tau" else tune.loguniform(lo, hi)
    for name in CHOICES:
        values = getattr(spec, name)
        if values and len(values) > 1:
            space[name] = tune.choice(list(values))
    return space


def fixed_values(spec: TuneSpec) -> dict[str, Any]:
    """Dimensions with a single value: applied to every trial's config."""
    out: dict[str, Any] = {n: getattr(spec, n)[0] for n in SEARCHED if getattr(spec, n)[0] == getattr(spec, n)[1]}
    for name in CHOICES:
        values = getattr(spec, name)
        if values and len(values) == 1:
            out[name] = values[0]
    return out


def default_point(spec: TuneSpec, base: Config) -> dict[str, Any]:
    """The paper's defaults (the base config's values) as a first point, clipped into the searched ranges."""
    current = {"tau": base.gradprom.tau, "lambda_e": base.gradprom.lambda_e, "lambda_r": base.gradprom.lambda_r,
               "lr": base.optim.lr, **{n: getattr(base.gradprom, n) for n in CHOICES}}
    point: dict[str, Any] = {}
    for name in param_space_names(spec):
        if name in SEARCHED:
            lo, hi = getattr(spec, name)
            point[name] = min(max(current[name], lo), hi)
        else:
            choices = getattr(spec, name)
            point[name] = current[name] if current[name] in choices else choices[0]
    return point


def param_space_names(spec: TuneSpec) -> list[str]:
    """Names of the searched dimensions, in a fixed order."""
    names = [n for n in SEARCHED if getattr(spec, n)[0] != getattr(spec, n)[1]]
    names += [n for n in CHOICES if getattr(spec, n) and len(getattr(spec, n)) > 1]
    return names


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's nested config dict: the base with the sampled values set."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    gp, opt = out.setdefault("gradprom", {}), out.setdefault("optim", {})
    for name in ("tau", "lambda_e", "lambda_r", *CHOICES):
        if name in params:
            gp[name] = params[name]
    if "lr" in params:
        opt["lr"] = params["lr"]
    return out


def task_metric(task: str) -> str:
    """platform.metrics.task_metric_name, imported on use: the `tune` parser reads TuneSpec for its help, and
    `gradprom --help` must not pay for torch and MONAI."""
    from gradprom.platform.metrics import task_metric_name

    return task_metric_name(task)
