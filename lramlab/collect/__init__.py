"""Collection: behaviour policies acting in real simulators, and the datasets they make.

`policies.make_policy(spec, task)` builds a policy from a spec string (`random`, `noisy:...`,
`expert`, `checkpoint:PATH`, `ppo`/`sac`/`dqn`/`specialist` (stable-baselines3 specialists),
`history`); `generate.generate(task, episodes, policy, out)` (`lramlab data generate`) rolls it
out and writes the store. This layer sits above `envs` and `models` (it runs simulators and
checkpointed agents) and below training and evaluation.
"""
