"""ft-scaling: how LLM finetuning scales (Zhang et al., ICLR 2024), in JAX."""

from setuptools import find_packages, setup

# Pinned: unpinned dependencies broke t5x installs (t5x#1086, #1413). These versions
# resolve together on Python 3.11 (DESIGN.md section 7).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "sacrebleu==2.6.0",
    "rouge-score==0.1.2",
    "tensorboard==2.21.0",
    "matplotlib==3.11.2",
    "numpy==2.4.6",
    "scipy==1.17.1",
    # `ft-scaling search`: TPE sampler + pruner; imported only by ft_scaling/study/search*.py.
    "optuna==5.0.0",
    # `--store=postgresql://...`: SQLAlchemy (optuna's dependency) picks psycopg 3 for
    # postgresql:// URLs; [binary] brings libpq, so nothing is compiled.
    "psycopg[binary]==3.3.9",
    # gs:// paths: etils.epath's fsspec backend (ft_scaling/files.py), the one the tests run
    # against a GCS emulator; orbax writes checkpoints through tensorstore's own GCS driver.
    "gcsfs==2026.10.1",
    # Hugging Face checkpoints (ft_scaling/models/hf, data/hf_vocab.py): the file formats and
    # hub resolution only; transformers itself is needed only by the parity tests ([bench]).
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "huggingface_hub==2.4.0",
]

EXTRAS = {
    # gcp-storage-emulator: the GCS server of tests/gcs_* (loopback only); pytest-xdist: `make
    # test` runs two workers (a test process keeps about one core busy).
    "test": [
        "pytest==9.0.3",
        "pytest-xdist==3.8.0",
        "ruff==0.17.6",
        "gcp-storage-emulator==2026.7.19",
    ],
    # benchmarks/ and the parity tests (never imported by the package): PyTorch baselines.
    # torch 2.13.0 is the CPU build the machine provides; a newer or unpinned torch pulls CUDA.
    "bench": ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2"],
}

setup(
    name="ft-scaling",
    version="0.1.0",
    description="Scaling laws of LLM finetuning (FMT, prompt tuning, LoRA) in JAX",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["ft_scaling", "ft_scaling.*", "launch", "launch.*"]),
    package_data={"ft_scaling": ["data/snapshots/*", "data/snapshots/**/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["ft-scaling=ft_scaling.cli:main"]},
)
