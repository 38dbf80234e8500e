"""nativevlm: build, train, study, evaluate and serve native vision-language models in pure PyTorch."""
from .config import (ConnectorConfig, LanguageConfig, ModelConfig, MoEConfig, VisionConfig, load_config,
                     save_config)
from .model.language import LanguageModel
from .model.vision import VisionEncoder
from .model.vlm import NativeVLM

__all__ = [
    "NativeVLM", "LanguageModel", "VisionEncoder",
    "ModelConfig", "VisionConfig", "ConnectorConfig", "LanguageConfig", "MoEConfig",
    "load_config", "save_config",
]
__version__ = "0.1.0"
