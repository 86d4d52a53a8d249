"""lumbar_jax: JAX/Flax grading of lumbar spine degeneration on MRI (RSNA 2024).

Install for development and tests:  pip install -e ".[test]"
Accelerators: add the `cuda` extra (NVIDIA GPU, CUDA 12) or the `tpu` extra (Cloud TPU VM), e.g. ".[test,cuda]".
"""

from setuptools import find_packages, setup

RUNTIME = [
    "jax==0.10.2",  # with jaxlib's CPU backend; the `cuda` / `tpu` extras add the accelerator plugins
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",  # needed by tensorflow-datasets, which does not declare it
    "grain==0.2.18",
    "array-record==0.8.6",
    "pydicom==3.0.2",
    "pylibjpeg>=2.0",  # pydicom's decoders: JPEG baseline/lossless/JPEG-LS (libjpeg), JPEG 2000 (openjpeg), RLE
    "pylibjpeg-libjpeg>=2.1",
    "pylibjpeg-openjpeg>=2.3",
    "pylibjpeg-rle>=2.0",
    "highdicom==0.28.2",  # builds the DICOM Structured Report of predict.py --sr (lumbar_jax/structured_report.py)
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "tqdm",
    "matplotlib",
    "tensorboardX",
]

setup(
    name="lumbar_jax",
    version="0.1.0",
    description="JAX/Flax research codebase for RSNA 2024 lumbar spine degenerative classification",
    python_requires=">=3.10",
    packages=find_packages(include=["lumbar_jax", "lumbar_jax.*"]),
    package_data={"lumbar_jax.data.rsna_lumbar_spine": ["*.md", "*.txt", "dummy_data/**/*"]},
    include_package_data=True,
    install_requires=RUNTIME,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist",
                 # References of the timm parity tests and of the PyTorch peers' agreement tests
                 # (tests/test_peer_*.py): the CPU torch build lies on this machine's disk; torchvision 0.28.0
                 # is the build for torch 2.13 (timm imports it; its C ops do not load on CPU torch, see
                 # benchmarks/peers/__init__.py).
                 "torch==2.13.0", "torchvision==0.28.0", "timm==1.0.29", "safetensors"],
        # Peers of the benchmarks (CPU build of torch lies on this machine's disk): MONAI for the data and
        # one-stage model sections, timm for the two-stage models (benchmarks/peers).
        "bench": ["torch==2.13.0", "torchvision==0.28.0", "timm==1.0.29", "monai==1.6.1", "einops", "nibabel"],
        # The dataset build on Apache Beam (lumbar_jax/data/beam_build.py). Resolves with the pinned stack but
        # downgrades protobuf (<7), pyarrow (<26) and pillow (<13): install it in its own environment.
        "beam": ["apache-beam==2.77.0"],
        # Accelerator backends of the same JAX release (the base install runs on CPU).
        "cuda": ["jax[cuda12]==0.10.2"],  # NVIDIA GPU, CUDA 12 (the wheels bring CUDA and cuDNN)
        "tpu": ["jax[tpu]==0.10.2"],  # Cloud TPU VM
    },
)
