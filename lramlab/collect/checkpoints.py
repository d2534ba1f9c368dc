"""Policies from checkpoint files (``checkpoint:<path>``): stable-baselines3 models (``.zip``, see
`lramlab.collect.specialists`), whole torch modules, and lramlab models run recurrently with the
task's target return."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lramlab.collect.base import Policy, get_task_spec
from lramlab.collect.specialists import SB3Policy, is_sb3_file
from lramlab.manifests import model_rewards, reward_rule

#: the format of the hand-written PPO's checkpoints (removed: specialists are SB3 models now)
_OLD_PPO_FORMAT = "lramlab-ppo/1"


def _torch():
    import torch

    return torch


class ModulePolicy(Policy):
    """A plain torch.nn.Module: obs batch (1, *obs_shape) float32 -> logits / actions (see module doc)."""

    def __init__(self, module, path: str, action_kind: str, action_dim: int):
        self.module = module.eval()
        self.action_kind, self.action_dim = action_kind, int(action_dim)
        self.spec = f"checkpoint:{path}"
        self.path = path

    def act(self, obs):
        torch = _torch()
        with torch.no_grad():
            out = self.module(torch.as_tensor(np.asarray(obs, dtype=np.float32))[None])
        out = out.detach().cpu()
        if not out.dtype.is_floating_point:  # integer actions
            if self.action_kind != "discrete":
                raise ValueError(f"{self.path}: module returned integer actions for a continuous task")
            return int(out.reshape(-1)[0])
        if self.action_kind == "discrete":
            if out.shape[-1] < self.action_dim:
                raise ValueError(f"{self.path}: module returned {out.shape[-1]} logits, the task has "
                                 f"{self.action_dim} actions")
            return int(out.reshape(-1, out.shape[-1])[0, : self.action_dim].argmax())
        a = out.reshape(-1)
        if a.numel() != self.action_dim:
            raise ValueError(f"{self.path}: module returned {a.numel()} action dims, expected {self.action_dim}")
        return np.clip(a.numpy(), -1, 1).astype(np.float32)

    def config(self) -> dict:
        return {"kind": "module"}


class LRAMPolicy(Policy):
    """An lramlab model (``lramlab.models.load_model``) run recurrently, conditioned on the target return."""

    def __init__(self, path: str, task):
        from lramlab.models import load_model  # lazy: torch models are only needed here

        torch = _torch()
        from lramlab.tokenizer import pad_state

        self._pad = pad_state
        self.model = load_model(path)
        self.model.eval()
        self.spec = f"checkpoint:{path}"
        spec = get_task_spec(task)
        self.task = spec
        self.scale = float(spec.reward_scale or 1.0)
        self.reward_rule = reward_rule(spec.domain)
        self.target = float(spec.target_return) if spec.target_return is not None else 0.0
        self.discrete = spec.action_kind == "discrete"
        self.n_actions = int(spec.action_dim) if self.discrete else 0
        self.act_dim = 0 if self.discrete else int(spec.action_dim)
        self.torch = torch

    def reset(self, seed: int) -> None:
        self.torch.manual_seed(int(seed))
        self.state = self.model.init_state(batch_size=1)
        self.rtg = self.target
        self.prev_reward = 0.0
        self.prev_action = None

    def act(self, obs):
        torch = self.torch
        o = np.asarray(obs)
        o = torch.as_tensor(o[None] if o.dtype == np.uint8 else self._pad(o)[None])
        with torch.no_grad():
            logits, self.state = self.model.step(
                self.state, obs=o, rtg=torch.tensor([self.rtg / self.scale], dtype=torch.float32),
                prev_reward=torch.tensor([self.prev_reward / self.scale], dtype=torch.float32),
                prev_action=self.prev_action)  # only read by the action-token variant
            a = self.model.decode(logits, n_actions=self.n_actions, act_dim=self.act_dim, greedy=True)
        self.prev_action = a
        a = a[0].cpu().numpy()
        if self.discrete:
            return int(a)
        return np.clip(a[: self.act_dim], -1, 1).astype(np.float32)

    def observe(self, reward: float) -> None:
        # the model's reward units (Atari: clipped), as in training and in rollout.Agent
        m = float(model_rewards(self.reward_rule, [reward])[0])
        self.rtg -= m
        self.prev_reward = m

    def config(self) -> dict:
        return {"kind": "lram", "target_return": self.target}


def load_checkpoint_policy(path: str | Path, task, greedy: bool = False) -> Policy:
    """A policy from a checkpoint file (SB3 model, nn.Module, or lramlab model; see module doc).

    greedy: SB3 models act with their mode / greedy action instead of sampling."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint policy: {path} does not exist")
    if is_sb3_file(path):  # before torch.load: torch.save files are zip archives too
        return SB3Policy.load(path, _known_task(task), deterministic=greedy)
    torch = _torch()
    from lramlab._io import UnsafeCheckpointError, safe_torch_load

    try:
        try:  # tensors and plain values first: an lramlab model needs no unpickling
            obj = safe_torch_load(path)
        except UnsafeCheckpointError:  # a whole pickled nn.Module: the user named this file (trusted)
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise ValueError(f"checkpoint policy: {path} is not a torch checkpoint or SB3 model ({err})") from err
    if isinstance(obj, dict) and obj.get("format") == _OLD_PPO_FORMAT:
        raise ValueError(f"checkpoint policy: {path} is a checkpoint of lramlab's former hand-written PPO "
                         f"({_OLD_PPO_FORMAT}); specialists are stable-baselines3 models now: retrain with "
                         f"--policy ppo (or load an SB3 .zip)")
    if isinstance(obj, torch.nn.Module):
        spec = get_task_spec(task)
        return ModulePolicy(obj, str(path), spec.action_kind, spec.action_dim)
    try:
        return LRAMPolicy(str(path), task)
    except ImportError as err:
        raise ValueError(f"checkpoint policy: {path} is neither an SB3 model, a torch.nn.Module, nor an "
                         f"lramlab model (lramlab.models is unavailable to load it: {err})") from err


def _known_task(task):
    """The task's spec when it is in the manifests (its spaces are then checked), else None."""
    try:
        return get_task_spec(task)
    except KeyError:
        return None
