"""recipes: datasets + tokenizers + a model + a loss, wired into one Accelerate training loop."""

from .config import ConfigError, TrainConfig
from .runs import RECIPES, get_recipe, load_run_info, load_trained, make_config
from .train import train

__all__ = ["RECIPES", "ConfigError", "TrainConfig", "get_recipe", "load_run_info", "load_trained", "make_config", "train"]
