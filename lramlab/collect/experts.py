"""Meta-World's scripted experts as policies (``expert`` / ``expert:noise=<std>``)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lramlab.collect.base import Policy



def metaworld_policy_class(task_name: str):
    """Meta-World task name (``reach-v2`` / ``reach`` / ``reach-v3``) -> its scripted policy class."""
    from lramlab._optional import require

    mp = require("metaworld.policies", "Meta-World scripted experts")
    import warnings

    # the scripted policies' gains exceed 1 by design and the env clips actions to [-1, 1]: a known,
    # harmless warning printed once per process (and once per task in a notebook's output)
    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)
    base = task_name.split("/")[-1]
    base = base[:-3] if base[-3:] in ("-v1", "-v2", "-v3") else base
    key = f"{base}-v3"
    cls = mp.ENV_POLICY_MAP.get(key)
    if cls is None:
        raise ValueError(f"no Meta-World scripted expert for {task_name!r} (looked up {key!r}); "
                         f"known: {', '.join(sorted(mp.ENV_POLICY_MAP))}")
    return cls


@dataclass
class ExpertConfig:
    noise: float = 0.0  # std of Gaussian action noise added to the expert's action (then clipped)

    def __post_init__(self):
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"expert: noise must be a finite std >= 0, got {self.noise}")


class MetaWorldExpert(Policy):
    def __init__(self, task_name: str, config: ExpertConfig | None = None):
        self.cfg = config or ExpertConfig()
        self.expert = metaworld_policy_class(task_name)()
        self.spec = "expert" + (f":noise={self.cfg.noise}" if self.cfg.noise else "")
        self.rng = np.random.default_rng(0)

    def act(self, obs):
        a = np.asarray(self.expert.get_action(np.asarray(obs, dtype=np.float64)), dtype=np.float32)
        if self.cfg.noise > 0:
            a = a + self.cfg.noise * self.rng.standard_normal(a.shape).astype(np.float32)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def config(self) -> dict:
        return asdict(self.cfg)

