"""``encnet prepare cifar10``: CIFAR-10, a classification dataset."""

from encnet_cli.prepare._common import Shared, Strict, run


def cifar10(shared: Shared, strict: Strict = False) -> None:
    """CIFAR-10 classification: train 50000 / val 10000, 10 classes, 32 x 32 (cifar-10-binary.tar.gz)."""
    run("cifar10", shared, {}, strict=strict)
