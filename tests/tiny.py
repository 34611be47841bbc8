"""Test helpers: a tiny seeded random Llama and a byte-level tokenizer, no files needed."""

import torch


def tiny_llama(seed: int = 0, layers: int = 4, hidden: int = 128, intermediate: int = 320, vocab: int = 512):
    """A small random Llama for tests and examples (no files): returns (model, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model, ByteTokenizer(vocab)


class ByteTokenizer:
    """A minimal byte-level tokenizer for the tiny test model (ids = UTF-8 bytes mod vocab)."""

    eos_token_id = 0
    pad_token_id = 0
    bos_token_id = None
    chat_template = None

    def __init__(self, vocab: int = 512):
        self.vocab_size = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(int(i) % 256 for i in ids if int(i) != 0).decode("utf-8", errors="replace")

    def __call__(self, text, add_special_tokens: bool = False, **_):
        if isinstance(text, str):
            return {"input_ids": self.encode(text)}
        return {"input_ids": [self.encode(t) for t in text]}


MOE_FAMILIES = ("qwen3_moe", "qwen2_moe", "olmoe", "mixtral", "granitemoe")


def tiny_moe(family: str = "qwen3_moe", seed: int = 0, layers: int = 3, hidden: int = 64, experts: int = 8,
             top_k: int = 2, intermediate: int = 32, vocab: int = 512):
    """A small random mixture-of-experts model of one of `MOE_FAMILIES` (fused experts, as transformers 5
    builds them; weights drawn with std 0.1 so every expert's output matters): returns (model, tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, num_experts_per_tok=top_k,
                  tie_word_embeddings=True)
    per_family = {
        "qwen3_moe": dict(num_experts=experts, moe_intermediate_size=intermediate, intermediate_size=2 * intermediate,
                          decoder_sparse_step=1, norm_topk_prob=True, head_dim=16),
        "qwen2_moe": dict(num_experts=experts, moe_intermediate_size=intermediate, intermediate_size=2 * intermediate,
                          shared_expert_intermediate_size=2 * intermediate, decoder_sparse_step=1),
        "olmoe": dict(num_experts=experts, intermediate_size=intermediate),
        "mixtral": dict(num_local_experts=experts, intermediate_size=intermediate),
        "granitemoe": dict(num_local_experts=experts, intermediate_size=intermediate),
    }
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **common, **per_family[family])
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)
    model.requires_grad_(False)
    return model, ByteTokenizer(vocab)
