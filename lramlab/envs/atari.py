"""Atari (ALE) adapter with the paper's conventions (App. B.2, LRAM `src/envs/atari_utils.py`).

`ALE/<Game>-v5` with frameskip=1, no sticky actions (the paper's `*NoFrameskip-v4` semantics) and
the full 18-action set, wrapped in gymnasium's AtariPreprocessing: frame skip 4 with max-pooling
over the last two frames, up to 30 no-ops on reset, grayscale, 64x64 (cv2 INTER_AREA).
Observation (1, 64, 64) uint8; action an int in [0, 18).

Options: `clip_rewards` (sign of the reward, DQN recipe; the raw reward is in info["raw_reward"];
off by default: evaluation scores use raw rewards, training-data generators turn it on and record
it), `terminal_on_life_loss` (off by default), `max_episode_steps` (agent steps, default 27000 =
108000 frames: the DQN-Replay/Dopamine limit, which the manifest's episode_length carries; LRAM's
own evaluation capped at 27000 *frames*, i.e. pass 6750 to mimic it), `fire_reset` (press FIRE
after reset, LRAM's FireResetEnv; off by default).
"""
from __future__ import annotations

import difflib
import re

from lramlab._optional import require
from lramlab.envs.wrappers import ChannelFirstGray, DefaultSeed, SignReward

#: episode cap in agent steps (DQN-Replay / Dopamine; = ALE v5's 108000-frame default)
MAX_EPISODE_STEPS = 27000
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
