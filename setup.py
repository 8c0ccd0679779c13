"""rlcf: reinforcement learning with CLIP feedback (test-time adaptation toolkit)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="rlcf",
    version="0.1.0",
    description="Test-time adaptation and RL training of CLIP-like models with CLIP rewards (RLCF)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rlcf", "rlcf.*", "tasks", "tasks.*"]),
    package_data={"tasks": ["**/*.json", "**/*.yaml"]},
    install_requires=[
        "torch>=2.4",   # fused AdamW on CPU (batched episodes), torch.nn.attention.sdpa_kernel
        "torchvision>=0.16",
        "open_clip_torch>=2.24",
        "transformers>=5.9",   # hf_clip: masking_utils create_bidirectional_mask (5.0) and inputs_embeds= (5.9)
        "peft>=0.21",
        "timm>=0.9",
        "numpy",
        "tqdm",
        "pyyaml",
        "pillow",
        "matplotlib",
    ],
    entry_points={"console_scripts": ["rlcf = tasks.command:console"]},
    extras_require={
        "test": ["pytest>=7", "pytest-xdist"],   # -n 2: the tests on both cores
        "caption": ["pycocoevalcap"],
    },
)
