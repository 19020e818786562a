"""Where a stage runs: its site and partition (`resources.site`, `resources.partition`), checked at plan time.

A stage without either runs where the run runs (the run's site, its default partition): today's behaviour.
A stage on another site reads and writes the run folder from that site's nodes, so both sites must mount one
file system (`shared_filesystems` in their site files) and the run folder must lie on it; a study that needs
that and cannot have it is refused before anything runs, saying why.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from perfscale.errors import SpecError
from perfscale.spec.site import Site, load_site
from perfscale.spec.study import Resources


def site_named(name: str) -> Site:
    """A site by name, looked up in site_dirs() (PERFSCALE_SITE_PATH, then perfscale's site_configs/)."""
    return load_site(name)


def common_filesystems(a: Site, b: Site) -> list[str]:
    return [fs for fs in a.shared_filesystems if fs in b.shared_filesystems]


def placed_site(resources: Resources, run_site: Site, where: str, stage: str) -> Site:
    """The site stage `stage` runs on (its resources.site, else the run's), its partition checked there."""
    target = run_site
    if resources.site is not None and resources.site != run_site.name:
        try:
            target = site_named(resources.site)
        except SpecError as exc:
            raise SpecError(f"{where}: stages.{stage}.resources.site: {exc}") from None
        if not common_filesystems(run_site, target):
            raise SpecError(
                f"{where}: stages.{stage}.resources.site: stage {stage!r} runs on site {target.name!r} and "
                f"the run's data lives on site {run_site.name!r}, but their site files name no file system "
                f"both mount (shared_filesystems: {run_site.name} {run_site.shared_filesystems}, "
                f"{target.name} {target.shared_filesystems}); add the one both mount to both files, or run "
                "the stage on the run's site"
            )
    if resources.partition is not None:
        try:
            target.partition(resources.partition)
        except SpecError as exc:
            raise SpecError(f"{where}: stages.{stage}.resources.partition: {exc}") from None
    return target


def check_run_folder(root: Path, run_site: Site, other_sites: Iterable[str]) -> None:
    """A run with stages on other sites must live on a file system every one of them mounts."""
    folder = root.resolve()
    for name in sorted(set(other_sites) - {run_site.name}):
        shared = common_filesystems(run_site, site_named(name))
        if not any(folder.is_relative_to(Path(fs).resolve()) for fs in shared):
            raise SpecError(
                f"run folder {folder} is not on a file system sites {run_site.name!r} and {name!r} both "
                f"mount ({', '.join(shared)}); put --run-dir under one of them"
            )


SITES_DIR = "sites"  # RUN/sites/<name>.json: the other sites a run's stages name, as planned


def record_sites(root: Path, run_site: Site, names: Iterable[str | None]) -> None:
    """Write the sites the stages name besides the run's into the run folder, as planned: a task reads its
    site there (on any node, whatever its PERFSCALE_SITE_PATH), as every task reads the run's site.json."""
    from perfscale.store.atomic import atomic_write_text

    for name in sorted({n for n in names if n} - {run_site.name}):
        atomic_write_text(site_named(name).model_dump_json(indent=1), root / SITES_DIR / f"{name}.json")


def site_of(task_site: str | None, run_site: Site, root: Path | None = None) -> Site:
    """The site a task runs on: its stage's `resources.site` (as recorded in run folder `root`, else by
    name), else the run's."""
    if not task_site or task_site == run_site.name:
        return run_site
    recorded = Path(root) / SITES_DIR / f"{task_site}.json" if root is not None else None
    if recorded is not None and recorded.is_file():
        return Site.model_validate_json(recorded.read_text())
    return site_named(task_site)


def placed(site: Site, partition: str | None) -> Site:
    """`site` with `partition` as its default partition (what an engine built from the site then asks for);
    the site itself when no partition is named."""
    if partition is None:
        return site
    site.partition(partition)  # an unknown one is an error naming the choices
    parts = {n: p.model_copy(update={"default": n == partition}) for n, p in site.partitions.items()}
    return site.model_copy(update={"partitions": parts})
