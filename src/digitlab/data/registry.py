"""Known MNIST-format datasets: file names, mirrors and checksums.

A file is accepted when the SHA-256 of the compressed file *or* of its
decompressed IDX content matches; the content hash is canonical because
redistributors (Debian, our shared folder) re-compress the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from digitlab.errors import DataError

SPLIT_FILES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset."""

    filename: str
    """Canonical file name, gzip-compressed (``train-images-idx3-ubyte.gz``)."""
    raw_sha256: str
    """SHA-256 of the decompressed IDX content."""
    raw_size: int
    """Size in bytes of the decompressed IDX content."""
    gz_sha256: tuple[str, ...] = ()
    """Accepted SHA-256 values of the .gz file as served by known sources."""
    gz_size: int | None = None
    """Size of the .gz file on the public mirrors, when known."""

    @property
    def raw_name(self) -> str:
        return self.filename.removesuffix(".gz")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset in MNIST format: four IDX files and class names."""

    name: str
    files: dict[str, FileSpec]
    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]
    system_dir: str
    """Where a Debian package installs it, if one does."""
    digits: bool = True
    """Handwritten digits (pictures get the digit clean-up: crop to ink, 20×20 box, centre of mass);
    False for other images (Fashion-MNIST), which are fitted whole into 28×28."""
    train_count: int = 60000
    test_count: int = 10000
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


MNIST = DatasetSpec(
    name="mnist",
    files={
        "train_images": FileSpec(
            "train-images-idx3-ubyte.gz",
            raw_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            raw_size=47040016,
            gz_sha256=("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",),
            gz_size=9912422,
        ),
        "train_labels": FileSpec(
            "train-labels-idx1-ubyte.gz",
            raw_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            raw_size=60008,
            gz_sha256=("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",),
            gz_size=28881,
        ),
        "test_images": FileSpec(
            "t10k-images-idx3-ubyte.gz",
            raw_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            raw_size=7840016,
            gz_sha256=("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",),
            gz_size=1648877,
        ),
        "test_labels": FileSpec(
            "t10k-labels-idx1-ubyte.gz",
            raw_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            raw_size=10008,
            gz_sha256=("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",),
            gz_size=4542,
        ),
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    class_names=tuple(str(d) for d in range(10)),
    system_dir="/usr/share/datasets/mnist",
)

# Content hashes measured on the files Debian's dataset-fashion-mnist installs
# (identical to the upstream IDX content); the .gz hashes are Debian's re-compressed files.
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files={
        "train_images": FileSpec(
            "train-images-idx3-ubyte.gz",
            raw_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            raw_size=47040016,
            gz_sha256=("b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",),
        ),
        "train_labels": FileSpec(
            "train-labels-idx1-ubyte.gz",
            raw_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            raw_size=60008,
            gz_sha256=("0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",),
        ),
        "test_images": FileSpec(
            "t10k-images-idx3-ubyte.gz",
            raw_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            raw_size=7840016,
            gz_sha256=("cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",),
        ),
        "test_labels": FileSpec(
            "t10k-labels-idx1-ubyte.gz",
            raw_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            raw_size=10008,
            gz_sha256=("8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",),
        ),
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    system_dir="/usr/share/datasets/fashion-mnist",
    digits=False,
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of a known dataset (``mnist``, ``fashion-mnist``); a one-line DataError otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
