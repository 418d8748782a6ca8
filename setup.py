from pathlib import Path

from setuptools import find_packages, setup

# Compatible ranges; constraints.txt pins the versions the tests run with (tests/test_packaging.py checks that
# every pin lies inside these ranges). Lower bounds of torch/torchvision: torch.onnx.export(dynamo=False) needs
# torch 2.5 (torchvision 0.20 is its pair); torch.amp.GradScaler(device) needs 2.3.
INSTALL_REQUIRES = [
    "torch>=2.5,<3",
    "torchvision>=0.20,<1",
    "numpy>=1.24",
    "pillow>=9.1",
    "opencv-python-headless>=4.8",  # cv2 is imported directly (resize, video); albumentations needs it too
    "pycocotools>=2.0.7",
    "faster-coco-eval>=1.5",
    "albumentations>=1.4",
    "pyyaml>=6.0",
    "tensorboard>=2.14",
    "tqdm>=4.60",
    "matplotlib>=3.7",
]
EXTRAS = {
    "test": ["pytest>=7", "pytest-xdist>=3", "onnx>=1.15", "onnxruntime>=1.17"],
    # orjson: 2x faster reading of COCO-sized JSON (annotations, results); json is the fallback.
    "fast-eval": ["orjson>=3.8"],
    "export": ["onnx>=1.15", "onnxruntime>=1.17"],
}

setup(
    name="retinanet",
    version="0.1.0",
    description="RetinaNet (focal loss for dense object detection) in PyTorch: train, evaluate, infer, export",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["retinanet", "retinanet.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["retinanet=retinanet.cli:main"]},
)
