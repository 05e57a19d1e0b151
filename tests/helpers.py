"""Helpers for tests that read what a run wrote."""

from pathlib import Path


def run_dirs(root: Path) -> list[Path]:
    """Run folders (those holding a config.yaml) under a log root."""
    return sorted(p.parent for p in Path(root).rglob("config.yaml"))


def scalars(run_dir: Path) -> dict[str, list[tuple]]:
    """Every scalar tag of a run folder's TensorBoard events: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).rglob("events.out.tfevents.*"))
