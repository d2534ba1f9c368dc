"""Atari (ALE) adapter with the paper's conventions (App. B.2, LRAM `src/envs/atari_utils.py`).

`ALE/<Game>-v5` with frameskip=1, no sticky actions (the paper's `*NoFrameskip-v4` semantics) and
the full 18-action set, wrapped in gymnasium's AtariPreprocessing: frame skip 4 with max-pooling
over the last two frames, up to 30 no-ops on reset, grayscale, 64x64 (cv2 INTER_AREA).
Observation (1, 64, 64) uint8; action an int in [0, 18).

Protocol (docs/protocol.md): rewards come out raw (game points): the store keeps them and scores
are computed from them; the model's clip to [-1, 1] happens where the model sees rewards
(`lramlab.manifests.model_rewards`, used by the sampler and the agent), never here. An episode is a
whole game: life loss does not end it (generated data, as DQN-Replay's episodes, and evaluation),
and nothing presses FIRE for the agent. The cap is `max_episode_steps` agent steps x 4 frames of
ALE's `max_num_frames_per_episode` (no-op frames count too), ending the episode with truncated=True;
the manifest's episode_length is 6750, i.e. 27000 frames, LRAM's evaluation limit.

Options: `clip_rewards` (sign of the reward, for uses outside lramlab's pipeline; the raw reward is in
info["raw_reward"]), `terminal_on_life_loss` (off), `max_episode_steps` (agent steps, default 6750),
`fire_reset` (press FIRE after reset, LRAM's FireResetEnv; off).
"""
from __future__ import annotations

import difflib
import re

from lramlab._optional import require
from lramlab.envs.wrappers import ChannelFirstGray, DefaultSeed, SignReward

#: episode cap in agent steps: 27000 frames at frame skip 4 (LRAM's evaluation TimeLimit on the
#: NoFrameskip env); DQN-Replay's own episodes run up to 27000 agent steps (Dopamine's limit)
MAX_EPISODE_STEPS = 6750
SCREEN_SIZE = 64
FRAME_SKIP = 4
NOOP_MAX = 30
N_ACTIONS = 18


def ale_game(name: str, env_id: str | None = None) -> str:
    """The ALE game name (`BankHeist`) from an LRAM env id (`BankHeistNoFrameskip-v4`), an ALE id
    (`ALE/BankHeist-v5`) or the paper's task name (`bank-heist`)."""
    if env_id:
        m = re.fullmatch(r"(?:ALE/)?([A-Za-z0-9]+?)(?:NoFrameskip)?(?:-v\d+)?", env_id)
        if m is None:
            raise ValueError(f"atari: cannot read a game from env_id {env_id!r} "
                             "(expected e.g. 'BankHeistNoFrameskip-v4' or 'ALE/BankHeist-v5')")
        return m.group(1)
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", name) if part)


def ale_env_id(name: str, env_id: str | None = None) -> str:
    """`ALE/<Game>-v5`, checked against gymnasium's registry (error lists close matches)."""
    gym = require("gymnasium", "Atari environments")
    ale_py = require("ale_py", "Atari environments")
    gym.register_envs(ale_py)
    game = ale_game(name, env_id)
    ale_id = f"ALE/{game}-v5"
    if ale_id not in gym.registry:
        known = [k for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5")]
        close = difflib.get_close_matches(ale_id, known, n=5, cutoff=0.6)
        raise ValueError(f"atari: task {name!r} (env_id {env_id!r}) maps to {ale_id!r}, which ale-py "
                         f"does not register; close matches: {close}")
    return ale_id


def make_atari(
    name: str,
    env_id: str | None = None,
    seed: int | None = None,
    render: bool = False,
    *,
    clip_rewards: bool = False,
    terminal_on_life_loss: bool = False,
    max_episode_steps: int = MAX_EPISODE_STEPS,
    fire_reset: bool = False,
):
    """Build one Atari task. `render=True`: env.render() gives the (210, 160, 3) RGB screen."""
    if max_episode_steps <= 0:
        raise ValueError(f"atari: max_episode_steps={max_episode_steps}, expected > 0 agent steps")
    gym = require("gymnasium", "Atari environments")
    ale_id = ale_env_id(name, env_id)
    env = gym.make(
        ale_id,
        frameskip=1,  # AtariPreprocessing skips frames itself (and max-pools the last two)
        repeat_action_probability=0.0,  # NoFrameskip-v4 semantics: no sticky actions
        full_action_space=True,  # the shared 18-way discrete head
        max_num_frames_per_episode=int(max_episode_steps) * FRAME_SKIP,
        render_mode="rgb_array" if render else None,
    )
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=NOOP_MAX,
        frame_skip=FRAME_SKIP,
        screen_size=SCREEN_SIZE,
        terminal_on_life_loss=terminal_on_life_loss,
        grayscale_obs=True,
        scale_obs=False,
    )
    env = ChannelFirstGray(env)
    if fire_reset:
        env = _FireReset(env)
    if clip_rewards:
        env = SignReward(env)
    return DefaultSeed(env, seed)


class _FireReset(require("gymnasium").Wrapper):
    """Press FIRE (action 1 in the full action set) after reset, as LRAM's FireResetEnv does."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset()
        return obs, info
