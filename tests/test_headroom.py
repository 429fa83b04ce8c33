"""The G-OPD target as a decodable model: exact at λ = 1 and λ = 0, the hand-computed mixture elsewhere."""

import pandas as pd
import pytest
import torch
from transformers import Qwen2ForCausalLM

from gopd_lab.lm.rollout import encode_prompts
from gopd_lab.loop.evaluate import evaluate, evaluate_target, generate
from gopd_lab.loop.headroom import TargetModel, headroom_curve
from gopd_lab.tasks import get_task
from gopd_lab.world.tiny import tiny_config, tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer
from gopd_lab.world.zoo import model_path

PROMPTS = ["7+5=", "47+85=", "3+90=", "61+2=", "99+99=", "12+30="]


@pytest.fixture(scope="module")
def pair():
    """A trained teacher and its base (the committed zoo): peaked, different distributions."""
    from transformers import AutoModelForCausalLM

    def load(name):
        return AutoModelForCausalLM.from_pretrained(model_path(name), dtype=torch.float32).eval()

    return load("teacher-add"), load("student-base"), build_char_tokenizer()


@pytest.mark.parametrize("lam, which", [(1.0, 0), (0.0, 1)])
def test_target_at_lam_1_is_the_teacher_and_at_lam_0_the_reference_exactly(pair, lam, which):
    teacher, reference, tok = pair
    tasks = {"add": get_task("add")}
    kwargs = dict(k=2, max_new_tokens=6, limit=40, seed=7)
    got = evaluate_target(teacher, reference, tok, tasks, lam=lam, **kwargs)
    want = evaluate(pair[which], tok, tasks, **kwargs)
    pd.testing.assert_frame_equal(got, want)
    prompts = encode_prompts(tok, PROMPTS)
    for greedy in (True, False):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a = generate(TargetModel(teacher, reference, lam), tok, prompts, max_new_tokens=6, greedy=greedy, generator=g1)
        b = generate(pair[which], tok, prompts, max_new_tokens=6, greedy=greedy, generator=g2)
        assert a == b


def _naive_greedy(teacher, reference, tok, prompt: str, lam: float, steps: int) -> str:
    """Uncached, unbatched decoding of argmax(λ·log π_T + (1 − λ)·log π_R), the whole sequence re-fed each step."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(steps):
        x = torch.tensor([ids + out])
        with torch.no_grad():
            lp_t = torch.log_softmax(teacher(input_ids=x).logits[0, -1].double(), -1)
            lp_r = torch.log_softmax(reference(input_ids=x).logits[0, -1].double(), -1)
        token = int((lam * lp_t + (1 - lam) * lp_r).argmax())
        out.append(token)
        if token == tok.eos_token_id:
            break
    return tok.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("lam", [0.5, 1.5, 3.0])
def test_batched_cached_greedy_decoding_matches_an_uncached_hand_decoder(pair, lam):
    teacher, reference, tok = pair
    got = generate(
        TargetModel(teacher, reference, lam), tok, encode_prompts(tok, PROMPTS), max_new_tokens=6, greedy=True
    )
    assert got == [_naive_greedy(teacher, reference, tok, p, lam, 6) for p in PROMPTS]


def test_each_step_samples_from_the_normalised_geometric_mixture():
    """softmax of the target's logits = π_R^(1−λ)·π_T^λ / Z, computed here from the two models' probabilities."""
    teacher, reference = tiny_model(seed=1), tiny_model(seed=2)
    x = torch.tensor([[5, 9, 17, 3], [8, 8, 2, 40]])
    lam = 1.7
    with torch.no_grad():
        logits = TargetModel(teacher, reference, lam)(input_ids=x).logits[:, -1]
        p_t = torch.softmax(teacher(input_ids=x).logits[:, -1].double(), -1)
        p_r = torch.softmax(reference(input_ids=x).logits[:, -1].double(), -1)
    mix = p_r ** (1 - lam) * p_t**lam
    torch.testing.assert_close(torch.softmax(logits.double(), -1), mix / mix.sum(-1, keepdim=True))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="different vocabularies"):
        TargetModel(tiny_model(seed=0), Qwen2ForCausalLM(tiny_config(200)), 1.5)
    with pytest.raises(ValueError, match="lam must be"):
        TargetModel(tiny_model(seed=0), tiny_model(seed=1), -1.0)


def test_headroom_curve_has_one_block_of_rows_per_lam(pair):
    teacher, reference, tok = pair
    curve = headroom_curve(teacher, reference, tok, {"add": get_task("add")}, lams=(0.0, 1.0), k=0, limit=8)
    assert list(curve["lam"]) == [0.0, 1.0] and set(curve.columns) >= {"lam", "domain", "greedy_acc", "n"}
    assert (curve["n"] == 8).all()
