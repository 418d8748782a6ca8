"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection") in PyTorch."""
from .build import build_criterion, build_model, build_postprocessor
from .config import Config, ConfigError
from .config_loader import load_config
from .detector import Detector
from .model import RetinaNet
from .runtime import load_detector

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "Detector", "RetinaNet", "build_criterion", "build_model",
           "build_postprocessor", "load_config", "load_detector", "__version__"]
