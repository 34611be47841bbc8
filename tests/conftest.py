"""Shared fixtures: a tiny seeded random Llama (no files) wrapped in an engine."""

import pytest
import torch

from tests.tiny import tiny_llama
from workbench.domain.plan import CalibrationSpec
from workbench.engine.facade import Engine

TINY_CALIBRATION = dict(samples=4, seqlen=32)


def make_engine(**calibration) -> Engine:
    model, tokenizer = tiny_llama(seed=0)
    return Engine.from_model(model, tokenizer, CalibrationSpec(**{**TINY_CALIBRATION, **calibration}), spec="tiny")


@pytest.fixture
def engine() -> Engine:
    torch.manual_seed(0)
    return make_engine()


@pytest.fixture
def hessian_engine() -> Engine:
    return make_engine(hessian=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local Hugging Face directory: the tiny Llama plus a byte-level BPE tokenizer trained on the
    stdlib help topics, so CLI paths (load, prune, export, replay) run offline in seconds."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    model, _ = tiny_llama(seed=0)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=model.config.vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
