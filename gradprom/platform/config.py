"""The typed, validated run configuration shared by the CLI, Ray Train, Tune and Flower.

One YAML file with six sections (data, model, gradprom, optim, run, distributed) plus `task` and `seed`. Every field
has a default, so an override file lists only what changes. A bad value raises `ConfigError` naming the
field, the value found and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.errors import ConfigError

Task = Literal["classification", "segmentation"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def F(default: Any = ..., description: str = "", **kw: Any) -> Any:
    """A config field: its default, its one description (the CLI's --help and the docs read it), its limits."""
    return Field(default, description=description, **kw)


class DataConfig(_Section):
    """data: where the images come from and how they are degraded and batched."""

    source: str = F("phantoms", "'phantoms' (the embedded generator), a store directory (`gradprom data convert`), "
                    "an image folder with a labels.csv, or a MedMNIST-style .npz")
    image_size: int = F(64, "phantoms: image side in pixels", ge=16, le=1024)
    num_classes: int = F(3, "phantoms: number of texture classes", ge=2, le=4)
    num_train: int = F(1024, "phantoms: training images", ge=1)
    num_val: int = F(256, "phantoms: validation images", ge=1)
    num_test: int = F(256, "phantoms: test images", ge=1)
    texture_contrast: float = F(0.06, "phantoms: amplitude of the lesion texture that carries the class", gt=0.0,
                                le=0.5)
    phantom_version: int = F(1, "phantoms: generator version; 1 the original (the default), 2 larger lesions and "
                             "coarser textures that survive x2 pooling (see platform/data/phantoms.py)", ge=1, le=2)
    degradation: str = F("gaussian:sigma=0.1", "the degradation that makes the network input from the clean image, "
                         "e.g. gaussian:sigma=0.1, lowdose, sr2, 'blur:sigma=1+gaussian:sigma=0.05'")
    batch_size: int = F(32, "training batch size (the global batch under Ray Train)", ge=1)
    val_fraction: float = F(0.1, "share of train held out as validation when the source has no validation split "
                            "(one seeded rule for every source)", gt=0.0, lt=1.0)
    loader_workers: int = F(0, "torch DataLoader worker processes (0 = load in the training process)", ge=0)
    sites: list[str] | None = F(None, "store or image folder: use only these sites (null = all)", min_length=1)
    streaming: Literal["auto", "on", "off"] = F("auto", "store: 'on' reads it by row groups (larger than memory), "
                                               "'off' loads it whole, 'auto' streams above `stream_above_mb` or "
                                               "half the memory available")
    stream_above_mb: float = F(1024.0, "store: stream when its images take more than this as float32", gt=0.0)
    shuffle_buffer: int = F(2048, "streaming: images in the shuffle buffer (also capped at ~256 MB)", ge=1)

    @field_validator("streaming", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans


class ModelConfig(_Section):
    """model: the two networks (MONAI)."""

    enhancer: Literal["unet", "basicunet"] = F("unet", "enhancer E: MONAI 'unet' (residual units) or 'basicunet'; "
                                              "output = input + residual")
    enhancer_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=2, max_length=6,
                                         description="enhancer channels per level")
    recognizer: Literal["resnet", "densenet", "unet"] | None = F(None, "recognizer R: 'resnet' or 'densenet' "
                                                                 "(classification), 'unet' (segmentation); null "
                                                                 "picks by task")
    recognizer_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=2, max_length=6,
                                           description="recognizer channels per level")
    recognizer_norm: Literal["batch", "instance"] = F("batch", "recognizer normalisation; 'instance' has no batch "
                                                      "statistics (worker-count independent under DDP)")

    @model_validator(mode="after")
    def _positive_channels(self) -> ModelConfig:
        for name in ("enhancer_channels", "recognizer_channels"):
            if any(c < 1 for c in getattr(self, name)):
                raise ValueError(f"`model.{name}` must list positive channel counts, got {getattr(self, name)}")
        return self


class GradPromConfig(_Section):
    """gradprom: how the enhancer's update is built from g_e and g_r, and how R learns."""

    strategy: str = F("gradprom", "how E's update is built from g_e and g_r: gradprom | joint | enhance_only | "
                      "cosine_weighted | pcgrad | torchjd:NAME[:k=v,...]")
    tau: float = F(0.0, "gate threshold: g_r is added when cos(g_e, g_r) > tau; tau >= 0 keeps the descent "
                   "guarantee <update, g_e> >= |g_e|^2, tau < 0 (allowed for search) loses it", ge=-1.0, le=1.0)
    granularity: Literal["global", "layer"] = F("global", "'global': one cosine over all enhancer parameters; "
                                                "'layer': one decision per parameter tensor")
    gate_space: Literal["parameter", "output"] = F("parameter", "'parameter': the paper's gate on dL/dθ_E; "
                                                   "'output': gates the upstream gradients at the enhanced image "
                                                   "and runs one VJP (what a joint step costs; not the same gate)")
    vjp: Literal["sequential", "batched"] = F("sequential", "the two parameter-space gradients: two VJPs sharing "
                                              "one forward pass, or one batched VJP")
    lambda_e: float = F(1.0, "weight of the enhancement loss", gt=0.0)
    lambda_r: float = F(0.1, "weight of the recognition loss in the enhancer's objective", ge=0.0)
    enhancement_loss: Literal["l1", "l1_ssim"] = F("l1", "enhancement loss: L1, or L1 + (1 - SSIM)")
    recognizer_mode: Literal["joint", "clean", "frozen"] = F("joint", "how R learns: on E's output (joint), on the "
                                                             "clean image (clean), or not at all (frozen)")
    recognizer_checkpoint: str | None = F(None, "checkpoint to load R from (required for frozen; a warm start "
                                          "otherwise)")

    # ---- gate variants whose guarantee holds for the step the optimizer takes (README "Gate variants under
    # Adam"); they apply to the additive strategies (update = g_e + admitted g_r) in parameter space.
    scale: Literal["none", "match", "clip"] = F("none", "magnitude control of g_r before the gate's sum (the gate "
                                                "decides on the unscaled pair): match: g_r <- scale_factor "
                                                "|g_e|/|g_r| g_r; clip: g_r shrunk to at most scale_factor |g_e|")
    scale_factor: float = F(1.0, "alpha of `scale`", gt=0.0)
    scale_granularity: Literal["global", "layer"] = F("global", "the norms of `scale` over all enhancer parameters "
                                                      "or per parameter tensor (layer needs granularity: layer)")
    scale_ema: float = F(0.0, "MetaBalance-style smoothing of the norms: EMA beta (0 = this step's norms)", ge=0.0,
                         lt=1.0)
    scale_relax: float = F(1.0, "MetaBalance relax factor r: g_r <- (r factor + 1 - r) g_r (1 = the full factor)",
                           ge=0.0, le=1.0)
    moments: Literal["shared", "separate"] = F("shared", "Adam statistics of E: one Adam on the update d (shared), "
                                               "or g_e and the admitted g_r with their own moments and one "
                                               "parameter step (separate: a closed gate is exactly an "
                                               "enhance-only Adam step)")
    gate_metric: Literal["euclidean", "preconditioned"] = F("euclidean", "the gate's metric: cos(g_e, g_r), or "
                                                            "the cosine in Adam's metric P = 1/(sqrt(v_e) + eps) "
                                                            "with the step P(g_e + [open] g_r)")

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        from gradprom.platform.strategies import expand_preset

        return expand_preset(data) if isinstance(data, dict) else data  # e.g. strategy: gradprom_layer

    @model_validator(mode="after")
    def _consistent(self) -> GradPromConfig:
        from gradprom.platform.strategies import (
            ADDITIVE_STRATEGIES,
            LAYER_STRATEGIES,
            OUTPUT_SPACE_STRATEGIES,
            parse_strategy,
        )

        parse_strategy(self.strategy)  # raises ConfigError naming the strategy
        if self.gate_space == "output":
            if self.granularity == "layer":
                raise ValueError("`gate_space: output` gates one cosine at the enhanced image; "
                                 "it cannot be combined with `granularity: layer`")
            if self.strategy not in OUTPUT_SPACE_STRATEGIES:
                raise ValueError(f"`gate_space: output` supports strategies {sorted(OUTPUT_SPACE_STRATEGIES)}, "
                                 f"got {self.strategy!r}")
        if self.granularity == "layer" and self.strategy not in LAYER_STRATEGIES:
            names = " and ".join(repr(n) for n in sorted(LAYER_STRATEGIES))
            raise ValueError(f"`granularity: layer` applies to {names}, got {self.strategy!r}")
        plain = {"scale": "none", "moments": "shared", "gate_metric": "euclidean"}
        variants = [f"{k}: {getattr(self, k)}" for k, off in plain.items() if getattr(self, k) != off]
        if variants and self.strategy not in ADDITIVE_STRATEGIES:
            raise ValueError(f"`{', '.join(variants)}` applies to the strategies {sorted(ADDITIVE_STRATEGIES)} "
                             f"(update = g_e + admitted g_r), got {self.strategy!r}")
        if self.scale != "none" and self.scale_granularity == "layer" and self.granularity != "layer":
            raise ValueError("`scale_granularity: layer` needs `granularity: layer`: with one global gate, per-layer "
                             "factors could turn an agreeing g_r into a disagreeing one (losing <d, g_e> >= |g_e|^2)")
        if variants and self.gate_space != "parameter":
            raise ValueError(f"`{', '.join(variants)}` needs `gate_space: parameter` (it works on g_e and g_r "
                             "in parameter space)")
        if self.recognizer_mode == "frozen" and not self.recognizer_checkpoint:
            raise ValueError("`recognizer_mode: frozen` needs `recognizer_checkpoint` (a trained recognizer)")
        return self


class OptimConfig(_Section):
    """optim: optimizers, epochs and the non-finite guard."""

    epochs: int = F(10, "number of epochs", ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = F("adam", "the optimizer of both models: adam, adamw (decoupled "
                                                   "weight decay) or sgd (plain or heavy-ball with `momentum`; the "
                                                   "paper's descent theorem holds exactly for plain SGD steps)")
    lr: float = F(1e-3, "enhancer learning rate", gt=0.0)
    lr_recognizer: float = F(1e-3, "recognizer learning rate", gt=0.0)
    weight_decay: float = F(0.0, "weight decay of both optimizers", ge=0.0)
    momentum: float = F(0.0, "sgd only: heavy-ball momentum", ge=0.0, lt=1.0)
    max_nonfinite_streak: int = F(10, "a step whose losses or gradients are NaN/Inf is skipped; this many in a row "
                                  "stop the run", ge=1)
    max_steps_per_epoch: int | None = F(None, "cap on optimizer steps per epoch (null = the whole train split); "
                                        "for quick runs", ge=1)


class RunSettings(_Section):
    """run: where a run is written and how it is monitored."""

    out: str = F("runs", "the runs directory; a run lives in <out>/<name>")
    name: str | None = F(None, "run name (null: <strategy>-<task>-<time>)")
    device: Literal["auto", "cpu", "cuda"] = F("auto", "auto = cuda when available; bf16 autocast on cuda")
    precision: Literal["bf16", "fp32"] = F("bf16", "training step on CUDA: bf16 runs E's and R's passes under bf16 "
                                           "autocast (faster); fp32 keeps them in fp32, so bf16 rounding cannot move "
                                           "the gate's cosine (benchmarks/gpu_check.py measures how much it does)")
    monitor: Literal["psnr", "ssim", "task"] = F("psnr", "validation metric that picks the best checkpoint")
    flush_seconds: float = F(5.0, "how often step rows are flushed to steps/*.parquet", gt=0.0)
    num_threads: int | None = F(None, "torch CPU threads (null = torch's default)", ge=1)
    figures_every_epoch: bool = F(True, "redraw figures/ after every epoch (live view); false draws them once at "
                                  "the end")
    tensorboard: bool = F(False, "also mirror the step and epoch tables to TensorBoard event files in "
                          "<run>/tensorboard/ (then `tensorboard --logdir <out>`)")

    @field_validator("name")
    @classmethod
    def _one_directory_name(cls, v: str | None) -> str | None:
        # the run lives in <out>/<name>: '../..' or 'a/b' would write outside --out or nest runs out of sight
        if v is not None and (v.strip() in ("", ".", "..") or "/" in v or "\\" in v or "\0" in v):
            raise ValueError("expected a single directory name (no '/', '\\', and not '.' or '..'); the run is "
                             "written to <run.out>/<name>")
        return v


class DistributedConfig(_Section):
    """distributed: Ray Train (`gradprom train --workers N`)."""

    workers: int = F(0, "Ray Train data-parallel workers; 0 = the local loop (no Ray)", ge=0, le=4096)
    gpus_per_worker: float = F(0.0, "GPUs per worker (> 0: CUDA with NCCL; 0: CPU with gloo)", ge=0.0)
    cpus_per_worker: float = F(1.0, "CPUs per worker", gt=0.0)
    address: str | None = F(None, "null = a private local Ray instance; 'auto' = the cluster on this machine; "
                            "HOST:PORT (the head's GCS port) = join that cluster")
    num_cpus: int | None = F(None, "local instance only: logical CPUs Ray may use (null = workers x "
                             "cpus_per_worker + 1)", ge=1)
    max_failures: int = F(0, "worker-group restarts from the latest checkpoint after a failure (-1 = forever)",
                          ge=-1)
    keep_checkpoints: int = F(2, "Ray Train keeps this many checkpoints, the best by `checkpoint_metric`", ge=1)
    checkpoint_metric: Literal["psnr", "ssim", "task", "loss_e", "loss_r", "gate_open_rate", "mean_cos"] = F(
        "psnr", "the metric that ranks Ray Train's checkpoints")
    checkpoint_order: Literal["max", "min"] = F("max", "higher or lower `checkpoint_metric` is better")
    timeout_s: float = F(60.0, "seconds to reach the cluster and to wait for its resources", gt=0.0)
    sync_check: Literal["off", "epoch", "step"] = F("epoch", "check that all workers took the same gate decisions "
                                                    "and hold identical weights: per epoch, per step, or never")
    sharding: Literal["exact", "streaming"] = F(
        "exact", "how workers share the training split: 'exact' = every worker walks the local loop's seeded order "
        "and takes its slice of each global batch (gate decisions independent of the number of workers; a streamed "
        "store holds one row group + the shuffle buffer per worker); 'streaming' = Ray Data's streaming_split of "
        "the store's row groups (throughput; batches depend on the number of workers and on timing)")
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = F(
        "PACK", "Ray placement of the workers: PACK (fill a node first), SPREAD (across nodes where possible), "
        "STRICT_SPREAD (one worker per node, or the run waits for nodes)")
    health_timeout_s: float = F(600.0, "a worker that answers no Ray Train health check for this long is declared "
                                "hung and its group restarted (RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S)", gt=0.0)


class Config(_Section):
    """One run's configuration: task, seed and six sections."""

    task: Task = F("classification", "classification | segmentation")
    seed: int = F(0, "random seed of data, degradations and model init")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    gradprom: GradPromConfig = Field(default_factory=GradPromConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunSettings = Field(default_factory=RunSettings)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _recognizer_fits_task(self) -> Config:
        rec = self.model.recognizer
        if rec is not None:
            ok = {"classification": ("resnet", "densenet"), "segmentation": ("unet",)}[self.task]
            if rec not in ok:
                raise ValueError(f"`model.recognizer: {rec}` does not fit `task: {self.task}`; use one of {list(ok)}")
        if self.optim.momentum and self.optim.optimizer != "sgd":
            raise ValueError(f"`optim.momentum` applies to `optim.optimizer: sgd`, got `{self.optim.optimizer}` "
                             "(Adam's momentum is its beta1)")
        g = self.gradprom
        if self.optim.optimizer == "sgd" and (g.moments != "shared" or g.gate_metric != "euclidean"):
            raise ValueError(f"`gradprom.moments: {g.moments}` / `gradprom.gate_metric: {g.gate_metric}` work on "
                             "Adam's moments; use `optim.optimizer: adam` or `adamw` (SGD's preconditioner is the "
                             "identity, so they would be the plain gate)")
        return self

    @property
    def gate_variant(self) -> dict[str, Any]:
        """The gate variant's fields as run.json records them (README "Gate variants under Adam")."""
        g = self.gradprom
        return {"scale": g.scale, "scale_factor": g.scale_factor, "moments": g.moments, "gate_metric": g.gate_metric,
                "optimizer": self.optim.optimizer}

    @property
    def recognizer_name(self) -> str:
        """The recognizer network, defaulted by task."""
        return self.model.recognizer or ("resnet" if self.task == "classification" else "unet")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and checkpoint-safe)."""
        return self.model_dump(mode="json")


MAX_SHOWN = 200  # characters of an offending value quoted in an error (a YAML alias bomb expands to megabytes)


def shown(value: Any) -> str:
    """repr of a value, cut to MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + f"... ({len(text)} characters)"


def close_field(loc: tuple, model: type[BaseModel]) -> str:
    """' (did you mean `section.field`?)' for a mistyped field name, or ''."""
    import difflib

    *parents, name = [str(p) for p in loc]
    for part in parents:
        info = model.model_fields.get(part)
        sub = getattr(info, "annotation", None)
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return ""
        model = sub
    close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean `{'.'.join([*parents, close[0]])}`?)" if close else ""


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One paragraph: each bad field, the value found (cut short) and what is allowed."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config field `{loc}`" + close_field(e["loc"], model or Config))
        elif "input" in e and not isinstance(e["input"], dict):
            lines.append(f"config field `{loc}`: got {shown(e['input'])}; {msg}")
        else:
            lines.append(f"config: {msg}" if loc == "(top level)" else f"config field `{loc}`: {msg}")
    return f"Invalid configuration ({source[:300]}): " + "; ".join(lines[:20]) + "."


def build_config(data: dict[str, Any] | None = None, source: str = "defaults") -> Config:
    """Validate a nested dict into a Config; errors become one-paragraph ConfigErrors."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    except ConfigError as err:
        raise ConfigError(f"Invalid configuration ({source}): {err}") from None


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict, with clear errors for missing or malformed files."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"Config file {str(p)!r} is a directory; expected a YAML file (e.g. "
                          f"{str(p / 'config.yaml')!r} if it is a run directory).")
    if not p.is_file():
        raise ConfigError(f"Config file {str(p)!r} does not exist (expected a YAML file, e.g. a run's config.yaml).")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file {str(p)!r} is not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(p)!r} must hold a mapping of sections, found a {type(data).__name__}.")
    return data


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`; a section that is not a mapping (`optim: 5`) meeting
    fields for it is a ConfigError, never silently replaced."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and k in out and out[k] is not None and not isinstance(out[k], dict):
            raise ConfigError(f"config section `{where}{k}` is {shown(out[k])}, not a mapping of fields, so "
                              f"{', '.join(f'`{where}{k}.{f}`' for f in list(v)[:5])} cannot be set in it; write it as "
                              f"`{k}:` followed by indented `field: value` lines.")
        out[k] = merge(out[k], v, f"{where}{k}.") if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dotted_override(key: str, value: Any) -> dict[str, Any]:
    """'gradprom.tau', 0.2 -> {'gradprom': {'tau': 0.2}}."""
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def parse_set_option(text: str) -> dict[str, Any]:
    """Parse one `--set section.field=value` (value read as YAML: numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set expects `section.field=value`, got {text!r}.")
    key, raw = text.split("=", 1)
    if not key.strip() or any(not p for p in key.strip().split(".")):
        raise ConfigError(f"--set expects `section.field=value`, got {shown(text)}: the field name before '=' is "
                          f"{'missing' if not key.strip() else 'malformed'}.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return dotted_override(key.strip(), value)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def annotated_defaults(model: type[BaseModel] | None = None, indent: str = "") -> str:
    """Every field with its default, its description above it as a YAML comment: `gradprom config` prints it,
    and the text is a valid config file that changes nothing."""
    import textwrap

    lines: list[str] = []
    for name, info in (model or Config).model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            doc = (sub.__doc__ or "").split(":", 1)[-1].strip()
            lines += ["", f"{indent}{name}:" + (f"  # {doc}" if doc else ""), annotated_defaults(sub, indent + "  ")]
            continue
        lines += [f"{indent}# {c}" for c in textwrap.wrap(info.description or "", 118 - len(indent))]
        value = yaml.safe_dump({name: info.get_default(call_default_factory=True)}, default_flow_style=True,
                               width=1000).strip()[1:-1]
        lines.append(f"{indent}{value}")
    return "\n".join(lines)
