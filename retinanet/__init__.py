"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection") in PyTorch."""
from .config import Config, ConfigError, load_config
from .detector import Detector
from .model import RetinaNet, build_criterion, build_model, build_postprocessor

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "Detector", "RetinaNet", "build_criterion", "build_model",
           "build_postprocessor", "load_config", "__version__"]
