"""Shared by the tests that need real Fashion-MNIST: skip them, naming the install step, when it is absent."""
import pytest

import pcnet.experiments.data as data


def fashion_available() -> bool:
    try:
        data.fashion_mnist_source(split="train")
        data.fashion_mnist_source(split="test")
        return True
    except RuntimeError:
        return False


needs_fashion = pytest.mark.skipif(not fashion_available(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
