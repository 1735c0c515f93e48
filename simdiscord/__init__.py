"""A simulated Discord with a scripted Coze bot, for tests, benchmarks and `coze-bridge --demo`."""

from simdiscord.coze import PromptInfo, ReplyPlan, Script, default_script
from simdiscord.server import SimulatedDiscord

__all__ = ["PromptInfo", "ReplyPlan", "Script", "SimulatedDiscord", "default_script"]
