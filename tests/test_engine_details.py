"""Engine details that matter for other model families: BOS on training lines, logit soft-capping."""

import torch
import torch.nn.functional as F

from seal_lm import engine as E
from seal_lm.engine import Engine


def test_bos_prepended_only_for_tokenizers_that_add_it(tiny):
    eng = Engine(tiny, n_slots=1)
    tok = eng.tokenizer
    plain = tok("hello world", add_special_tokens=False)["input_ids"]
    assert eng.encode_example("", "hello world", 64)[0] == plain  # SmolLM2's tokenizer adds no BOS
    orig = tok.bos_token_id
    bos = orig if orig is not None else 0
    tok.bos_token_id = bos
    eng._adds_bos = True  # as a Llama/Gemma tokenizer would
    try:
        ids, labels = eng.encode_example("", "hello world", 64)
        assert ids == [bos] + plain and labels == [-100] + plain
        ids, labels = eng.encode_example("Q:", " A", 64)
        assert ids[0] == bos and labels[:2] == [-100, -100]
        with_bos = tok.decode([bos]) + "hello world"
        ids, _ = eng.encode_example(with_bos, "!", 64)
        assert ids.count(bos) == 1  # a prompt that already starts with BOS keeps just one
    finally:
        eng._adds_bos = False
        tok.bos_token_id = orig


def test_loss_applies_final_logit_softcapping(tiny):
    eng = Engine(tiny, n_slots=1)
    ids = torch.tensor([[5, 9, 13, 17, 21, 25]])
    batch = E._padded_batch([(ids[0].tolist(), ids[0].tolist())], pad=0)
    plan_of_pos = torch.zeros_like(ids)

    def reference(cap):
        logits = eng.model(input_ids=ids).logits[0, :-1].float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits, ids[0, 1:], reduction="sum")

    with torch.no_grad(), eng.lora.use(torch.tensor([eng.base_slot])):
        plain = eng._per_adapter_loss_sums(eng.model, batch, plan_of_pos, 1)[0]
        assert torch.allclose(plain, reference(None), atol=1e-4)
        eng.model.config.final_logit_softcapping = 0.5
        try:
            capped = eng._per_adapter_loss_sums(eng.model, batch, plan_of_pos, 1)[0]
        finally:
            eng.model.config.final_logit_softcapping = None
        assert torch.allclose(capped, reference(0.5), atol=1e-4)
        assert not torch.allclose(capped, plain, atol=1e-3)
