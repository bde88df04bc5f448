"""The federation's own settings, beside the engine's Config.

A federation's config.yaml is the engine's config plus one `federated:` section, so the same file drives the
engine's step on every site and re-runs (or resumes) the federation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.config import Config, F, build_config, format_validation_error
from gradprom.platform.errors import ConfigError

FL_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")


class SiteOverride(BaseModel):
    """Per-site changes to the run config (keyed by the site's index in `federated.sites`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    tau: float | None = Field(None, ge=-1.0, le=1.0)  # this site's gate threshold
    strategy: str | None = None  # this site's engine strategy (gradprom, enhance_only, joint, ...)
    degradation: str | None = None  # this site's scanner/dose (overrides the noise ramp)
    # this site's own data: a MedMNIST-style .npz with train_* and val_* arrays (replaces its partition)
    data: str | None = None


class Fault(BaseModel):
    """Fault injection for tests and drills: `site` misbehaves in `round` (never set in real runs)."""

    model_config = ConfigDict(extra="forbid")
    site: int = Field(ge=0)
    round: int = Field(ge=1)
    # crash: the ClientApp raises; hang: it sleeps past `round_timeout_s`; nan: it returns NaN weights
    kind: Literal["crash", "hang", "nan"] = "crash"


class FedConfig(BaseModel):
    """Hospitals, rounds, aggregation and faults of one federation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    # --- hospitals -------------------------------------------------------------------------------------
    hospitals: int = F(4, "number of hospitals (sites)", ge=1, le=256)
    dirichlet_alpha: float = F(1.0, "case mix: each site's label shares ~ Dirichlet(alpha); large = IID, small = "
                               "skewed", gt=0.0)
    size_skew: float = F(0.5, "size: site k gets a share ~ (1 + size_skew)^-k of the images (0 = equal)", ge=0.0,
                         le=10.0)
    noise_min: float | None = F(0.05, "scanner/dose ramp: site k's input is gaussian:sigma=s_k, s_k spread over "
                                "[noise_min, noise_max] (null: every site uses data.degradation). Giving "
                                "data.degradation (--degradation) without noise_min/noise_max switches the ramp "
                                "off, so the sites use that degradation", ge=0.0)
    noise_max: float | None = F(0.2, "upper end of the scanner/dose ramp (see noise_min for when it is off)", ge=0.0)
    site_val_fraction: float = F(0.2, "share of each site's images kept for its own validation", gt=0.0, lt=1.0)
    use_store_sites: bool = F(False, "a store with a site column: one hospital per stored site")
    sites: dict[int, SiteOverride] = Field(default_factory=dict, description="per-site overrides by index")
    # --- rounds and local work --------------------------------------------------------------------------
    rounds: int = F(3, "federated rounds", ge=1)
    local_steps: int = F(4, "GradProm steps per site per round", ge=1)
    gate_level: Literal["local", "server"] = F("local", "local: each site gates its own steps; server: the server "
                                               "gates the aggregated enhancement/task pair")
    # --- aggregation (Flower's strategies) -------------------------------------------------------------
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedyogi"] = F("fedavg", "Flower aggregation strategy")
    proximal_mu: float = F(0.01, "fedprox: weight of (mu/2)|w - w_global|^2 in the local step", ge=0.0)
    server_lr: float = F(0.01, "fedadam/fedyogi: server learning rate (eta)", gt=0.0)
    server_tau: float = F(1e-3, "fedadam/fedyogi: adaptivity (tau)", gt=0.0)
    fraction_train: float = F(1.0, "share of the sites asked to train each round", gt=0.0, le=1.0)
    evaluate_sites: bool = F(True, "every site evaluates each new global model on its own split (off saves one "
                             "message per site and round)")
    min_nodes: int | None = F(None, "sites that must be connected before a round starts (null = all)", ge=1)
    min_answers: int = F(1, "a round updates the global model only when this many sites answered usably", ge=1)
    round_timeout_s: float = F(600.0, "seconds a round waits for replies", gt=0.0)
    # --- privacy (Flower's differential-privacy wrappers and client mods) --------------------------------
    dp: Literal["none", "client-fixed", "server-fixed", "adaptive"] = F(
        "none", "differential privacy of the aggregate: client-fixed (each site clips its update, the server adds "
        "noise), server-fixed (the server clips each update and adds noise), adaptive (server-side clipping whose "
        "norm follows a quantile of the update norms). Under DP every site weighs equally in the mean")
    dp_clipping_norm: float = F(1.0, "dp: L2 norm each site's weight update (new - global, E and R together) is "
                                "clipped to; adaptive: the initial norm", gt=0.0)
    dp_noise_multiplier: float = F(1.0, "dp: Gaussian noise std on the mean update = noise_multiplier * clipping "
                                   "norm / sampled sites", ge=0.0)
    dp_delta: float = F(1e-5, "dp: the delta at which epsilon is reported (fixed clipping with fedavg/fedprox, "
                        "Flower's RDP accountant)", gt=0.0, lt=1.0)
    # --- secure aggregation (Flower's SecAgg+, secagg.py) ------------------------------------------------
    secure_aggregation: Literal["none", "secagg+"] = F(
        "none", "secagg+: Flower's SecAgg+ protocol; each site masks its update (and, with gate_level server, its "
        "g_e/g_r sums), so the server learns only their sample-weighted mean, never one site's vector. Metrics "
        "(num_examples, losses, PSNR) still travel in the clear. Needs 2 or more sampled sites; not with dp")
    secagg_clipping_range: float = F(8.0, "secagg+: each entry a site masks (its update times n_k/max_weight) "
                                     "must lie in [-c, c]; a site refuses to send one outside it", gt=0.0)
    secagg_quantization_range: int = F(2**22, "secagg+: quantisation levels Q over [-c, c]; an entry of the mean "
                                       "is off by at most (sites x 2c/Q + weight rounding) / sum_k(n_k/max_weight)",
                                       ge=2)
    secagg_max_weight: float = F(1000.0, "secagg+: the largest num_examples a site may have (its weight is "
                                 "quantised as n_k/max_weight; close to the largest site's size = finer mean)", gt=0.0)
    secagg_reconstruction_threshold: float = F(0.5, "secagg+: share of a site's key holders needed to rebuild "
                                               "its masks if it drops out (at least 2); higher = harder to collude, "
                                               "less tolerant of dropouts", gt=0.0, le=1.0)
    # --- runtime -----------------------------------------------------------------------------------------
    cpus_per_client: int = F(1, "simulation: Ray CPUs per ClientApp (whole CPUs: Flower's simulation runtime)", ge=1)
    num_cpus: int | None = F(None, "simulation: CPUs of the private Ray instance (null = one per site, up to all)",
                             ge=1)
    record_updates: bool = F(False, "debugging and tests: keep each site's returned weights under <run>/updates/")
    faults: list[Fault] = Field(default_factory=list, description="fault injection for tests and drills")

    @model_validator(mode="after")
    def _consistent(self) -> FedConfig:
        if (self.noise_min is None) != (self.noise_max is None):
            raise ValueError("`federated.noise_min` and `federated.noise_max` go together (both set or both null)")
        if self.noise_min is not None and self.noise_min > self.noise_max:
            raise ValueError(f"`federated.noise_min` ({self.noise_min}) must not exceed `noise_max` ({self.noise_max})")
        for k in self.sites:
            if not 0 <= k < self.hospitals:
                raise ValueError(f"`federated.sites` names site {k}, but there are {self.hospitals} hospitals "
                                 f"(0..{self.hospitals - 1})")
        for f in self.faults:
            if f.site >= self.hospitals:
                raise ValueError(f"`federated.faults` names site {f.site}, but there are {self.hospitals} hospitals")
        if self.min_answers > self.hospitals:
            raise ValueError(f"`federated.min_answers` ({self.min_answers}) exceeds `hospitals` ({self.hospitals})")
        if self.dp == "client-fixed" and self.gate_level == "server":
            raise ValueError("`federated.dp: client-fixed` clips the reply's weights in Flower's fixedclipping_mod, "
                             "which refuses extra arrays; the server gate's (sum_ge, sum_gr) travel beside them. Use "
                             "`dp: server-fixed` or `adaptive` with `gate_level: server`")
        if self.secure_aggregation != "none":
            self._check_secure()
        if self.min_nodes is not None and self.min_nodes > self.hospitals:
            raise ValueError(f"`federated.min_nodes` ({self.min_nodes}) exceeds `hospitals` ({self.hospitals})")
        return self

    def _check_secure(self) -> None:
        name = f"`federated.secure_aggregation: {self.secure_aggregation}`"
        if self.dp != "none":
            raise ValueError(f"{name} and `federated.dp: {self.dp}` cannot be combined: server-fixed and adaptive "
                             f"clip each site's update at the server, which SecAgg+ hides from it; client-fixed "
                             f"would need Flower's legacy DP wrapper and clipping mod inside SecAgg+ (Flower 1.42 "
                             f"runs SecAgg+ on its legacy strategies only), which GradProm does not build. Set one "
                             f"of the two to none")
        sampled = max(int(self.hospitals * self.fraction_train), self.min_connected)  # Flower's sampling rule
        if self.hospitals < 2 or sampled < 2:
            raise ValueError(f"{name} needs at least 2 sampled sites (SecAgg+ sums over sites); got hospitals "
                             f"{self.hospitals}, fraction_train {self.fraction_train}, min_nodes {self.min_nodes}")
        if self.record_updates:
            raise ValueError(f"{name} with `federated.record_updates: true`: under SecAgg+ the server never holds "
                             f"a site's reply, so there is nothing per site to keep")
        if self.hospitals * self.secagg_quantization_range >= 2**32:
            raise ValueError(f"`federated.secagg_quantization_range` ({self.secagg_quantization_range}) x "
                             f"`hospitals` ({self.hospitals}) must stay below 2**32, SecAgg+'s modulus: the masked "
                             f"sum would overflow")

    @property
    def min_connected(self) -> int:
        """Sites that must be connected before a round starts (defaults to all hospitals)."""
        return self.min_nodes or self.hospitals


def build_federation(data: dict[str, Any] | None = None, source: str = "defaults") -> tuple[Config, FedConfig]:
    """Split a nested dict into the engine Config and the FedConfig, validating both (ConfigError on mistakes)."""
    raw = dict(data or {})
    fed_raw = raw.pop("federated", None) or {}
    if not isinstance(fed_raw, dict):
        raise ConfigError(f"Invalid configuration ({source}): `federated` must be a mapping of fields.")
    if "degradation" in (raw.get("data") or {}) and not {"noise_min", "noise_max"} & set(fed_raw):
        # an explicit degradation is what the sites' scanners do: the built-in noise ramp would override it
        fed_raw = {**fed_raw, "noise_min": None, "noise_max": None}
    cfg = build_config(raw, source=source)
    try:
        fed = FedConfig.model_validate(fed_raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, FedConfig)
                          .replace("config field `", "config field `federated.")
                          .replace("(did you mean `", "(did you mean `federated.")
                          ) from None
    if fed.gate_level == "server" and cfg.gradprom.gate_space != "parameter":
        raise ConfigError(f"Invalid configuration ({source}): `federated.gate_level: server` gates the enhancer's "
                          f"parameter-space update; it needs `gradprom.gate_space: parameter`.")
    for k, s in fed.sites.items():
        if s.strategy is not None:
            try:
                build_config({**raw, "gradprom": {**raw.get("gradprom", {}), "strategy": s.strategy}}, source=source)
            except ConfigError as e:
                raise ConfigError(f"federated.sites.{k}.strategy: {e}") from None
    return cfg, fed


def federation_dict(cfg: Config, fed: FedConfig) -> dict[str, Any]:
    """The nested dict of both parts (what config.yaml holds)."""
    return {**cfg.to_dict(), "federated": fed.model_dump(mode="json")}


def save_federation(cfg: Config, fed: FedConfig, path: str | os.PathLike) -> None:
    """Write config.yaml (engine config + `federated:`) atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(federation_dict(cfg, fed), sort_keys=False))


def from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The nested config dict from Flower's run config (`[tool.flwr.app.config]` / `flwr run --run-config`).

    Keys: `config` (a YAML file, "" = defaults), `set` ("field=value; field=value", any dotted field, e.g.
    "federated.rounds=2; data.num_train=64"), and the shortcuts `out`, `name`, `rounds`, `local-steps`,
    `strategy`, `gate-level`, `secure-aggregation`, `hospitals` (0 = take `num-partitions` from the SuperNodes'
    node config).
    """
    from gradprom.platform.config import dotted_override, load_config_file, merge, parse_set_option

    raw: dict[str, Any] = {}
    if run_config.get("config"):
        raw = load_config_file(str(run_config["config"]))
    for part in str(run_config.get("set", "") or "").split(";"):
        if part.strip():
            raw = merge(raw, parse_set_option(part.strip()))
    shortcuts = {"out": "run.out", "name": "run.name", "rounds": "federated.rounds",
                 "local-steps": "federated.local_steps", "strategy": "federated.strategy",
                 "gate-level": "federated.gate_level", "hospitals": "federated.hospitals",
                 "secure-aggregation": "federated.secure_aggregation"}
    for key, field in shortcuts.items():
        v = run_config.get(key)
        if v not in (None, "", 0):
            raw = merge(raw, dotted_override(field, v))
    return raw
