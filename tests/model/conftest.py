import pytest

from model.tiny import build_tiny_llava_onevision


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny LLaVA-OneVision + tokenizer, loadable offline with from_pretrained."""
    directory = tmp_path_factory.mktemp("tiny_llava")
    build_tiny_llava_onevision(directory)
    return directory
