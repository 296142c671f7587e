"""Every file a run keeps in its directory (`trainer.run_dir`), named in one place."""

from __future__ import annotations

from pathlib import Path


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        """The resolved config of the latest launch."""
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        """One JSON line per logged step."""
        return self.path / "metrics.jsonl"

    @property
    def provenance(self) -> Path:
        """One line per launch: commit, config hash, versions, host."""
        return self.path / "provenance.jsonl"

    @property
    def summary(self) -> Path:
        """Written when the run finishes."""
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        """Third-party output of the driver and of every worker (unless trainer.verbose)."""
        return self.path / "logs"

    @property
    def driver_log(self) -> Path:
        """The driver's third-party output while Ray starts."""
        return self.logs / "driver.log"

    @property
    def failure_report(self) -> Path:
        """What stopped the latest attempt, worker traceback included."""
        return self.path / "failure.txt"

    @property
    def workers(self) -> Path:
        """Every worker's role, rank, node and pid."""
        return self.path / "workers.json"

    @property
    def final_model(self) -> Path:
        """The exported HF model (a LoRA adapter merged in)."""
        return self.path / "final_model"

    @property
    def final_adapter(self) -> Path:
        """The exported LoRA adapter (PEFT)."""
        return self.path / "final_adapter"

    @property
    def learning_curve(self) -> Path:
        return self.path / "learning_curve.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def train_log(self) -> Path:
        """A study run's console output (written by the study runner)."""
        return self.path / "train.log"
