"""The study model: stages, their parameters and grids, resources, retries and data flow."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, JsonValue, field_validator, model_validator

from perfscale.spec.common import SafeName, Seed, Strict, Walltime
from perfscale.spec.loader import load_model

Scalar = str | int | float | bool | None
# grid values may be any JSON value: a whole hyperparameter mapping can be one point of a grid. Values are
# hashed into task keys as JSON: YAML's dates, non-string keys and .inf / .nan are refused at load
Value = JsonValue


class Resources(Strict):
    cores: int = Field(1, ge=1)
    memory_gb: float = Field(1.0, gt=0)
    gpus: int = Field(0, ge=0)
    nodes: int = Field(1, ge=1)
    walltime: Walltime = 3600.0
    expected_runtime: Walltime | None = Field(
        None, description="used to pack array chunks; defaults to walltime"
    )
    # a task with ranks > 1 is an MPI job started by the site's launcher (docs/distributed.md)
    ranks: int = Field(1, ge=1, description="MPI ranks of each task (total over its nodes)")
    ranks_per_node: int | None = Field(None, ge=1, description="default: all ranks on one node")
    cores_per_rank: int = Field(1, ge=1)
    gpus_per_rank: int = Field(0, ge=0)
    # where the stage runs (docs/placement.md); None: the run's site and its default partition
    site: SafeName | None = Field(None, description="a site name (perfscale sites list) other than the run's")
    partition: str | None = Field(None, min_length=1, description="a partition (Slurm) or queue (LSF, PBS)")


class RetryPolicy(Strict):
    """How many times a task is retried after an attempt fails with a given kind (0 = never)."""

    app_error: int = Field(1, ge=0)
    timeout: int = Field(0, ge=0)
    oom: int = Field(0, ge=0)
    node_lost: int = Field(2, ge=0)
    unsupported_counter: int = Field(0, ge=0)
    bad_input: int = Field(0, ge=0, le=0, description="bad input never gets better by retrying")
    preempted: int = Field(3, ge=0)
    cancelled: int = Field(0, ge=0)


class Grid(Strict):
    """A parameter grid: the cartesian product of `product`, times the rows of `zip`, minus `exclude`."""

    product: dict[str, list[Value]] = Field(default_factory=dict)
    zip: dict[str, list[Value]] = Field(default_factory=dict)
    exclude: list[dict[str, Scalar | list[Scalar]]] = Field(default_factory=list)

    @field_validator("product", "zip")
    @classmethod
    def _non_empty_lists(cls, v: dict[str, list[Value]]) -> dict[str, list[Value]]:
        for name, values in v.items():
            if not values:
                raise ValueError(f"parameter {name!r} has an empty list of values; give at least one")
        return v

    @model_validator(mode="after")
    def _check(self) -> Grid:
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            sizes = {k: len(v) for k, v in self.zip.items()}
            raise ValueError(f"zip lists must have equal lengths, got {sizes}")
        both = set(self.product) & set(self.zip)
        if both:
            raise ValueError(f"parameters {sorted(both)} appear in both product and zip; keep each in one")
        names = set(self.product) | set(self.zip)
        for i, rule in enumerate(self.exclude):
            unknown = set(rule) - names
            if unknown:
                raise ValueError(f"exclude[{i}] names {sorted(unknown)}, which are not grid parameters")
        return self


class Stage(Strict):
    kind: str = Field(
        description="registered stage kind: profile, split, train, sample, evaluate, function..."
    )
    params: dict[str, JsonValue] = Field(default_factory=dict)
    grid: Grid = Field(default_factory=Grid)
    repetitions: int = Field(1, ge=1)
    seeds: list[Seed] | None = None
    inputs: list[str] = Field(default_factory=list, description="stages whose whole output this stage reads")
    foreach: str | None = Field(None, description="one task per task of this upstream stage")
    resources: Resources | None = None
    retry: RetryPolicy | None = None

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and not seeds:
            raise ValueError(
                "an empty list gives the stage no tasks; give at least one seed, or remove seeds"
            )
        return seeds

    @model_validator(mode="after")
    def _no_clash(self) -> Stage:
        grid_names = set(self.grid.product) | set(self.grid.zip)
        clash = grid_names & set(self.params)
        if clash:
            raise ValueError(f"{sorted(clash)} set both in params and grid; keep each in one place")
        for reserved in ("rep", "seed"):
            if reserved in grid_names or reserved in self.params:
                raise ValueError(
                    f"'{reserved}' is set by perfscale (repetitions/seeds); rename the parameter"
                )
        return self


class Study(Strict):
    name: SafeName
    description: str = ""
    seed: Seed = 0
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    resources: Resources = Field(default_factory=Resources, description="defaults for every stage")
    stages: dict[SafeName, Stage]

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: dict[str, Stage]) -> dict[str, Stage]:
        if not stages:
            raise ValueError("a study needs at least one stage")
        seen: set[str] = set()
        for name, stage in stages.items():
            for up in [*stage.inputs, *([stage.foreach] if stage.foreach else [])]:
                if up == name:
                    raise ValueError(f"stage {name!r} cannot read its own output")
                if up not in stages:
                    raise ValueError(
                        f"stage {name!r} reads unknown stage {up!r}; stages are {sorted(stages)}"
                    )
                if up not in seen:
                    raise ValueError(f"stage {name!r} reads {up!r}, which must be listed before it")
            seen.add(name)
        return stages

    def resources_of(self, stage: str) -> Resources:
        return self.stages[stage].resources or self.resources

    def retry_of(self, stage: str) -> RetryPolicy:
        return self.stages[stage].retry or self.retry


def load_study(path: str | Path) -> Study:
    return load_model(path, Study)
