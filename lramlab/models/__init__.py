"""LRAM models: config, agent (encoders + backbone + shared action head), checkpoints.

    from lramlab.models import LRAMConfig, build_model, load_model, action_loss
"""
from .agent import LRAM, AgentState, build_model
from .checkpoint import load_model, save_model
from .config import LRAMConfig
from .head import action_loss, decode

__all__ = ["LRAM", "AgentState", "LRAMConfig", "action_loss", "build_model", "decode", "load_model", "save_model"]
