"""A run's resolved config, composed from its overrides exactly as `sfpo-rl-train` composes it (Hydra's compose
API, the package's config directory and schema), without starting anything. The study runner checks every arm
with it before the first run; results/compare/reconstruct_provenance.py loads this file on its own to hash the
configs of runs made at an older commit (so it imports `sfpo_rl` only inside the function).
"""

from __future__ import annotations


class ComposeError(ValueError):
    """Hydra or the config schema rejected the overrides; the message says why, on one line."""


def resolved_config(overrides: list[str], config_dir: str | None = None) -> str:
    """The resolved config YAML that `sfpo-rl-train <overrides>` writes to run_dir/config.yaml (and hashes into
    its provenance), after the same checks; ComposeError otherwise."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from sfpo_rl.trainer.config import register_schema, to_run_config
    from sfpo_rl.trainer.setup import CONFIG_DIR

    register_schema()
    try:
        with initialize_config_dir(config_dir=config_dir or CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
            # What @hydra.main does before the job: the runtime (${hydra:...} interpolations) is set, and the job
            # sees its config without the hydra node.
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
            resolved = OmegaConf.to_yaml(cfg, resolve=True)
            to_run_config(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ComposeError(" ".join(str(exc).split())[:400]) from None
    return resolved
