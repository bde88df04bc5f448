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

from .atomic import atomic_write_text
from .errors import ConfigError

Task = Literal["classification", "segmentation"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    # where images come from: "phantoms" (embedded generator), a store directory (`gradprom data convert`),
    # an image folder with a labels.csv, or a path to a MedMNIST-style .npz
    source: str = "phantoms"
    # phantoms only: image side in pixels, number of texture classes, split sizes, texture strength
    image_size: int = Field(64, ge=16, le=1024)
    num_classes: int = Field(3, ge=2, le=4)
    num_train: int = Field(1024, ge=1)
    num_val: int = Field(256, ge=1)
    num_test: int = Field(256, ge=1)
    texture_contrast: float = Field(0.06, gt=0.0, le=0.5)
    # degradation applied to the clean image to make the network input; see degradations.parse_degradation
    degradation: str = "gaussian:sigma=0.1"
    batch_size: int = Field(32, ge=1)
    # share of `train` held out as validation when an .npz has no val_* arrays
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # torch DataLoader worker processes (0 = load in the training process)
    loader_workers: int = Field(0, ge=0)
    # store or image folder: use only these sites (None = all); every image keeps its site
    sites: list[str] | None = Field(None, min_length=1)
    # store: "on" reads it by row groups (a store larger than memory trains), "off" loads it whole, "auto"
    # streams when the selected images take more than `stream_above_mb` as float32, or half the memory available
    streaming: Literal["auto", "on", "off"] = "auto"
    stream_above_mb: float = Field(1024.0, gt=0.0)
    # streaming: images in the shuffle buffer (more = closer to a full shuffle; also capped at ~256 MB)
    shuffle_buffer: int = Field(2048, ge=1)

    @field_validator("streaming", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans


class ModelConfig(_Section):
    # enhancer E: MONAI "unet" (residual units) or "basicunet"; output = input + residual
    enhancer: Literal["unet", "basicunet"] = "unet"
    enhancer_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=2, max_length=6)
    # recognizer R: "resnet" or "densenet" (classification), "unet" (segmentation); None picks by task
    recognizer: Literal["resnet", "densenet", "unet"] | None = None
    recognizer_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=2, max_length=6)
    # recognizer normalisation; "instance" has no batch statistics (worker-count independent under DDP)
    recognizer_norm: Literal["batch", "instance"] = "batch"

    @model_validator(mode="after")
    def _positive_channels(self) -> "ModelConfig":
        for name in ("enhancer_channels", "recognizer_channels"):
            if any(c < 1 for c in getattr(self, name)):
                raise ValueError(f"`model.{name}` must list positive channel counts, got {getattr(self, name)}")
        return self


class GateConfig(_Section):
    # how E's update is built from g_e and g_r: gradprom | joint | enhance_only | cosine_weighted | pcgrad |
    # torchjd:NAME[:k=v,...] (any torchjd aggregator over the stacked pair [g_e, g_r])
    strategy: str = "gradprom"
    # gate threshold: g_r is added when cos(g_e, g_r) > tau. tau >= 0 guarantees <update, g_e> >= |g_e|^2
    # (a descent direction for the enhancement loss); tau < 0 is allowed for search but loses that guarantee.
    tau: float = Field(0.0, ge=-1.0, le=1.0)
    # "global": one cosine over all enhancer parameters; "layer": one decision per parameter tensor
    granularity: Literal["global", "layer"] = "global"
    # "parameter": the paper's gate on dL/dtheta_E; "output": a cheap approximation that gates on the
    # upstream gradients at the enhanced image and runs a single VJP (costs what a joint step costs)
    gate_space: Literal["parameter", "output"] = "parameter"
    # how the two parameter-space gradients are computed: two VJPs sharing one forward pass ("sequential",
    # measured faster on CPU) or one batched VJP (torch.autograd.grad(is_grads_batched=True))
    vjp: Literal["sequential", "batched"] = "sequential"
    lambda_e: float = Field(1.0, gt=0.0)
    lambda_r: float = Field(0.1, ge=0.0)
    # enhancement loss: "l1" or "l1_ssim" (L1 + (1 - SSIM))
    enhancement_loss: Literal["l1", "l1_ssim"] = "l1"
    # how R learns: on E's output ("joint"), on the clean image ("clean"), or not at all ("frozen")
    recognizer_mode: Literal["joint", "clean", "frozen"] = "joint"
    # checkpoint to load R from (required for "frozen"; optional warm start otherwise)
    recognizer_checkpoint: str | None = None

    # ---- gate variants whose guarantee holds for the step the optimizer takes (README "Gate variants under
    # Adam"); they apply to the additive strategies (update = g_e + admitted g_r) in parameter space.
    # magnitude control of g_r before the gate's sum; the gate decides on the unscaled pair. "match":
    # g_r <- scale_factor * |g_e|/|g_r| * g_r; "clip": g_r shrunk to at most scale_factor * |g_e|
    scale: Literal["none", "match", "clip"] = "none"
    scale_factor: float = Field(1.0, gt=0.0)
    # the norms of `scale` over all enhancer parameters ("global") or per parameter tensor ("layer")
    scale_granularity: Literal["global", "layer"] = "global"
    # MetaBalance-style smoothing: an EMA of the norms with this beta (0 = this step's norms), and the relax
    # factor r: g_r <- (r * factor + 1 - r) * g_r (1 = the full factor)
    scale_ema: float = Field(0.0, ge=0.0, lt=1.0)
    scale_relax: float = Field(1.0, ge=0.0, le=1.0)
    # Adam statistics of E: "shared" (one Adam on the update d) or "separate" (g_e and the admitted g_r keep
    # their own moments, one parameter step; a closed gate is then exactly an enhance-only Adam step)
    moments: Literal["shared", "separate"] = "shared"
    # the gate's metric: "euclidean" (cos(g_e, g_r)) or "preconditioned" (the cosine in Adam's metric
    # P = 1/(sqrt(v_e) + eps) of g_e's second moment; the step is then P(g_e + [open] g_r))
    gate_metric: Literal["euclidean", "preconditioned"] = "euclidean"

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        from .strategies import expand_preset

        return expand_preset(data) if isinstance(data, dict) else data  # e.g. strategy: gradprom_layer

    @model_validator(mode="after")
    def _consistent(self) -> "GateConfig":
        from .strategies import ADDITIVE_STRATEGIES, LAYER_STRATEGIES, OUTPUT_SPACE_STRATEGIES, parse_strategy

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
    epochs: int = Field(10, ge=1)
    # the optimizer of both models: "adam", "adamw" (decoupled weight decay) or "sgd" (plain or heavy-ball
    # with `momentum`; the paper's descent theorem holds exactly for plain SGD steps)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)  # enhancer
    lr_recognizer: float = Field(1e-3, gt=0.0)  # recognizer
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # sgd only
    # a step whose losses or gradients are NaN/Inf is skipped; this many in a row stops the run
    max_nonfinite_streak: int = Field(10, ge=1)
    # stop after this many optimizer steps per epoch (None = the whole train split); for quick runs
    max_steps_per_epoch: int | None = Field(None, ge=1)


class RunConfig(_Section):
    out: str = "runs"  # the runs directory; a run lives in <out>/<name>
    name: str | None = None  # default: <strategy>-<task>-<time>
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available; bf16 autocast on cuda
    monitor: Literal["psnr", "ssim", "task"] = "psnr"  # validation metric that picks the best checkpoint
    flush_seconds: float = Field(5.0, gt=0.0)  # how often step rows are flushed to steps/*.parquet
    num_threads: int | None = Field(None, ge=1)  # torch CPU threads (None = torch's default)
    # redraw figures/ after every epoch (live view); False draws them once at the end (grids of short runs)
    figures_every_epoch: bool = True


class DistributedConfig(_Section):
    # Ray Train data-parallel workers; 0 = the local loop (no Ray). `gradprom train --workers N`
    workers: int = Field(0, ge=0, le=4096)
    gpus_per_worker: float = Field(0.0, ge=0.0)  # > 0: workers train on CUDA with NCCL; 0: CPU with gloo
    cpus_per_worker: float = Field(1.0, gt=0.0)
    # None = start a private local Ray instance; "auto" = join the cluster running on this machine;
    # "HOST:PORT" (the head's GCS port, 6379 by default) = join that cluster
    address: str | None = None
    # local instance only: logical CPUs Ray may use (None = workers * cpus_per_worker + 1, one for Ray Data)
    num_cpus: int | None = Field(None, ge=1)
    # worker-group restarts from the latest checkpoint after a failure (-1 = retry forever)
    max_failures: int = Field(0, ge=-1)
    # Ray Train keeps this many checkpoints, the best by `checkpoint_metric` (latest.pt and best.pt always exist)
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_metric: Literal["psnr", "ssim", "task", "loss_e", "loss_r", "gate_open_rate", "mean_cos"] = "psnr"
    checkpoint_order: Literal["max", "min"] = "max"
    # seconds to reach the cluster and to wait for it to offer the workers' resources, then a clear error
    timeout_s: float = Field(60.0, gt=0.0)
    # check that all workers took the same gate decisions and hold bit-identical weights: once per epoch
    # (one small all-gather), after every step (tests, debugging), or never
    sync_check: Literal["off", "epoch", "step"] = "epoch"


class Config(_Section):
    task: Task = "classification"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    gradprom: GateConfig = Field(default_factory=GateConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _recognizer_fits_task(self) -> "Config":
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


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config field `{loc}`")
        elif "input" in e and not isinstance(e["input"], dict):
            lines.append(f"config field `{loc}`: got {e['input']!r}; {msg}")
        else:
            lines.append(f"config: {msg}" if loc == "(top level)" else f"config field `{loc}`: {msg}")
    return f"Invalid configuration ({source}): " + "; ".join(lines) + "."


def build_config(data: dict[str, Any] | None = None, source: str = "defaults") -> Config:
    """Validate a nested dict into a Config; errors become one-paragraph ConfigErrors."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    except ConfigError as err:
        raise ConfigError(f"Invalid configuration ({source}): {err}") from None


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict, with clear errors for missing or malformed files."""
    p = Path(path)
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


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return dotted_override(key.strip(), value)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
