from setuptools import find_packages, setup

setup(
    name="evokd",
    version="0.1.0",
    description=(
        "Knowledge distillation for fairseq translation models: word-level KD, "
        "Evolving KD (EKD) and TAKD chains, teacher caches and fast students"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["evokd", "evokd.*"]),
    package_data={
        "evokd": [
            "corpora/*/*.gz",
            "corpora/*/README.md",
            "plans/*.yaml",
            "teachers/prompts/*.txt",
            "methods/patch/prompts/*.txt",
        ]
    },
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "ve-fairseq==0.12.3; python_version >= '3.11'",
        "fairseq==0.12.2; python_version < '3.11'",
        "sacremoses",
        "sacrebleu>=2",
        "sentencepiece",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "ruff==0.17.6", "ctranslate2>=4"],
        "ct2": ["ctranslate2>=4"],
        "teachers": ["ctranslate2>=4", "transformers[serving]>=4.40", "sentencepiece"],
    },
    entry_points={
        "console_scripts": ["evokd = evokd.cli:main", "evokd-train = evokd.train:cli_main"]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
