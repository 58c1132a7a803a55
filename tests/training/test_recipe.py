"""The recipe in one process (no Ray): activation checkpointing and per-layer compilation change speed and memory,
never the loss or the gradients; how many layers "auto" checkpoints follows the memory it has."""
import pytest
import torch
from transformers import Qwen2Config

from model.tiny import save_tiny_base
from pipelines.annotations import load_annotations
from pipelines.training_data import open_versions
from training.config import ConfigError, parse
from training.modeling import checkpointed_layer_count, to_device
from training.recipe import Recipe

QWEN2_7B = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28)
GIB = 2**30


def test_auto_checkpoints_only_the_layers_that_do_not_fit():
    tokens, optimizer = 6332, 12 * 170_000_000  # a 7B step: 32 frames x 197 tokens; LoRA r64 + one patch
    assert checkpointed_layer_count("auto", QWEN2_7B, tokens, free_bytes=120 * GIB, optimizer_bytes=optimizer) == 0
    some = checkpointed_layer_count("auto", QWEN2_7B, tokens, free_bytes=40 * GIB, optimizer_bytes=optimizer)
    assert 0 < some < 28
    more = checkpointed_layer_count("auto", QWEN2_7B, 4 * tokens, 40 * GIB, optimizer)  # B=4: 4x the activations
    assert some < more < 28
    assert checkpointed_layer_count("auto", QWEN2_7B, 4 * tokens, 8 * GIB, optimizer) == 28
    assert checkpointed_layer_count("auto", QWEN2_7B, tokens, free_bytes=None, optimizer_bytes=0) == 0  # CPU
    assert [checkpointed_layer_count(s, QWEN2_7B, 0, None, 0) for s in ("none", "full", "7", "99")] == [0, 28, 7, 28]


def test_compiled_layers_keep_less_so_auto_checkpoints_fewer():
    """The compiled estimate (fitted to the H200 steps of 2026-12-01) against the cases measured there: 123.5 GiB free
    after the 7B model is on the GPU; one 6,779-token sample needs no recompute, a packed B=4 (27,116 tokens) some
    but fewer layers than the eager estimate (20 of 28 measured at 85.9 GiB peak)."""
    free, optimizer = int(123.5 * GIB), 12 * 170_000_000
    def count(tokens, compiled, dropout=True):
        return checkpointed_layer_count("auto", QWEN2_7B, tokens, free, optimizer, compiled=compiled, dropout=dropout)
    assert count(6779, compiled=True) == 0
    assert 10 <= count(27116, compiled=True) < count(27116, compiled=False) <= 28
    assert count(2 * 6779, compiled=True) < count(27116, compiled=True)
    assert 8 <= count(27116, compiled=True, dropout=False) < count(27116, compiled=True)  # 8 fitted at 115 GiB


def test_auto_plans_each_micro_batch_from_its_own_length(inputs):
    """ "auto" re-plans per micro-batch: a longer batch checkpoints more layers, a shorter one fewer; the flags sit
    on the layers themselves (no wrapper: parameter names unchanged)."""
    store, annotations, base, samples = inputs
    cfg = parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
                 str(base), "--patch-d-model", "32", "--lora-r", "8", "--model.compile", "False"])
    recipe = Recipe(cfg, samples, open_versions(store, cfg.modalities), torch.device("cpu")).setup()
    names = {n for n, _ in recipe.module.named_parameters()}
    text = recipe.model.hf.config.text_config
    recipe._free, recipe._optimizer_bytes = 200 * (text.hidden_size + text.intermediate_size) * 18, 0
    layers = recipe.model.hf.model.language_model.layers
    assert recipe.plan_checkpointing(5) == [] and not any(layer.recompute for layer in layers)
    assert recipe.plan_checkpointing(10_000) == list(range(len(layers)))
    assert all(layer.recompute for layer in layers)
    assert recipe.plan_checkpointing(5) == []
    assert {n for n, _ in recipe.module.named_parameters()} == names


@pytest.fixture(scope="module")
def inputs(synthetic_store, tmp_path_factory):
    store, annotations = synthetic_store
    samples = load_annotations(annotations)
    base = save_tiny_base(tmp_path_factory.mktemp("base"), [t for s in samples for _, t in s.turns], video_dim=32)
    return store, annotations, base, samples


def step_once(inputs, *flags) -> tuple[float, dict[str, torch.Tensor], list[int]]:
    store, annotations, base, samples = inputs
    cfg = parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
                 str(base), "--batch-size", "3", "--patch-d-model", "32", "--lora-r", "8", "--lr", "1e-2",
                 "--model.lora.dropout", "0", *flags])
    recipe = Recipe(cfg, samples, open_versions(store, cfg.modalities), torch.device("cpu")).setup()
    (_, batch), = [next(recipe.batches())]
    live = recipe.model.patches["audio"].out[-1]  # a live patch, so its gradients reach the query and side paths
    torch.nn.init.normal_(live.weight, std=0.1)
    loss = recipe.module(batch)
    loss.backward()
    grads = {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone()  # the wrapper's name, not a new weight
             for n, p in recipe.module.named_parameters() if p.grad is not None}
    return loss.item(), grads, recipe.checkpointed


def test_checkpointing_and_compilation_leave_loss_and_gradients_unchanged(inputs):
    eager_loss, eager_grads, none = step_once(inputs, "--model.activation-checkpointing", "none",
                                              "--model.compile", "False")
    assert none == [] and len(eager_grads) > 10
    for flags in (["--model.activation-checkpointing", "full", "--model.compile", "False"],
                  ["--model.activation-checkpointing", "1", "--model.compile", "True"]):
        loss, grads, checkpointed = step_once(inputs, *flags)
        assert checkpointed == ([0, 1] if "full" in flags else [0])
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        assert grads.keys() == eager_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_checkpointed_layers_train_packed_batches_of_new_lengths(inputs):
    """Packed pairs of samples, each pair of a new length and new spans, with the recipe's LoRA dropout: the compiled
    layers recompile once for dynamic shapes (with a checkpoint traced inside the compiled graph, Inductor failed
    there: "Node ... was invalid, but is output") and give eager's losses and patch gradients (LoRA B starts at
    zero, so the dropout masks, which differ between eager and compiled, change neither)."""
    from pipelines.training_data import sample_row

    store, annotations, base, samples = inputs
    varied = varied_lengths(samples)
    results = {}
    for compiled in ("False", "True"):
        cfg = parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
                     str(base), "--batch-size", "2", "--data.pack", "--patch-d-model", "32", "--lora-r", "8",
                     "--model.activation-checkpointing", "1", "--model.compile", compiled])
        recipe = Recipe(cfg, varied, open_versions(store, cfg.modalities), torch.device("cpu")).setup()
        torch.manual_seed(0)
        torch.nn.init.normal_(recipe.model.patches["audio"].out[-1].weight, std=0.1)
        loader, results[compiled] = recipe.loader(), []
        for pair in ((0, 1), (1, 2), (2, 0)):
            rows = [loader.fetch(sample_row(varied[i])) for i in pair]
            recipe.module.zero_grad(set_to_none=True)
            loss = recipe.module(recipe.collate({k: [r[k] for r in rows] for k in rows[0]}))
            loss.backward()
            patch_grads = {n: p.grad.clone() for n, p in recipe.module.named_parameters()
                           if "patches" in n and p.grad is not None}
            results[compiled].append((loss.item(), patch_grads))
    assert len({loss for loss, _ in results["False"]}) == 3  # three pairs, three losses
    for (eager_loss, eager_grads), (loss, grads) in zip(results["False"], results["True"]):
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        assert grads.keys() == eager_grads.keys() and len(grads) > 5
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def varied_lengths(samples):
    """The first three samples with questions of different lengths, so that the three differ in length."""
    from pipelines.annotations import Sample

    return [Sample(s.id, s.video_id, ((s.turns[0][0], s.turns[0][1] + " low or high?" * i), s.turns[1]))
            for i, s in enumerate(samples[:3])]


def test_a_packed_batch_gives_the_loss_and_gradients_of_its_samples_one_by_one(inputs):
    """B=3 samples of different lengths packed into one sequence (each attends to its own span, no padding): the
    loss is the token-weighted mean of the three samples' losses and the gradients are the same weighted sum."""
    from pipelines.training_data import sample_row

    store, annotations, base, samples = inputs
    varied = varied_lengths(samples)
    cfg = parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
                 str(base), "--batch-size", "3", "--data.pack", "--patch-d-model", "32", "--lora-r", "8",
                 "--model.lora.dropout", "0", "--model.compile", "False"])
    recipe = Recipe(cfg, varied, open_versions(store, cfg.modalities), torch.device("cpu")).setup()
    torch.nn.init.normal_(recipe.model.patches["audio"].out[-1].weight, std=0.1)
    loader = recipe.loader()
    rows = [loader.fetch(sample_row(varied[i])) for i in recipe.order.batch(0, 0)]

    def loss_and_grads(batch):
        recipe.module.zero_grad(set_to_none=True)
        loss = recipe.module(batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in recipe.module.named_parameters() if p.grad is not None}

    packed = recipe.collate({k: [r[k] for r in rows] for k in rows[0]})
    assert packed["input_ids"].shape[0] == 1 and packed["attention_mask"] is None
    lengths = [len(recipe.collate({k: [r[k]] for k in r})["input_ids"][0]) for r in rows]
    assert len(set(lengths)) > 1 and packed["input_ids"].shape[1] == sum(lengths)  # no padding anywhere
    starts = [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]  # what varlen kernels are told
    assert packed["packing"]["cu_seq_lens_q"].tolist() == starts and packed["packing"]["max_length_q"] == max(lengths)
    packed_loss, packed_grads = loss_and_grads(packed)
    weights, losses, grads = [], [], []
    for row in rows:
        single = recipe.collate({k: [row[k]] for k in row})
        weights.append(int((single["labels"][:, 1:] != -100).sum()))
        loss, grad = loss_and_grads(single)
        losses.append(loss)
        grads.append(grad)
    total = sum(weights)
    assert packed_loss == pytest.approx(sum(w * l for w, l in zip(weights, losses)) / total, rel=1e-5)
    for name, grad in packed_grads.items():
        expected = sum(w * g[name] for w, g in zip(weights, grads)) / total
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen and FlexAttention train on GPUs only")
def test_varlen_and_flex_attention_train_a_packed_batch_like_sdpa_per_sample(inputs):
    """GPU: the packed batch above, with torch's flash varlen kernel (cumulative lengths), with FlexAttention
    (block-sparse mask) and with SDPA on each sample's span (the default, whose equality with the samples one by one
    the CPU test shows): the same loss and gradients, to bf16 rounding."""
    store, annotations, base, samples = inputs
    results = {}
    kernels = {"varlen": "pave_varlen", "flex": "flex_attention", "sdpa": "pave_packed_sdpa"}
    for attention in kernels:
        cfg = parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
                     str(base), "--batch-size", "3", "--data.pack", "--patch-d-model", "32", "--lora-r", "8",
                     "--model.lora.dropout", "0", "--model.attention", attention, "--gpus-per-worker", "1"])
        recipe = Recipe(cfg, varied_lengths(samples), open_versions(store, cfg.modalities),
                        torch.device("cuda")).setup()
        assert recipe.attention == kernels[attention]
        torch.manual_seed(0)
        torch.nn.init.normal_(recipe.model.patches["audio"].out[-1].weight, std=0.1)
        (_, batch), = [next(recipe.batches())]
        assert batch["attention_mask"] is None and batch["input_ids"].shape[0] == 1
        loss = recipe.module(to_device(batch, recipe.device))
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for _, p in sorted(recipe.module.named_parameters())
                           if p.grad is not None])
        results[attention] = loss.item(), grads
    dense_loss, dense_grads = results["sdpa"]
    for attention in ("varlen", "flex"):
        loss, grads = results[attention]
        assert loss == pytest.approx(dense_loss, rel=1e-2), attention
        assert (grads - dense_grads).norm() < 0.05 * dense_grads.norm(), attention


@pytest.mark.parametrize("attention, pack, reason", [("flex", True, "flex trains on GPUs only"),
                                                     ("varlen", True, "varlen trains on GPUs only"),
                                                     ("varlen", False, "add --data.pack")])
def test_gpu_attention_kernels_without_gpus_are_refused_by_the_config(inputs, attention, pack, reason):
    store, annotations, base, _ = inputs
    with pytest.raises(ConfigError, match=reason):
        parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
               str(base), "--model.attention", attention] + ["--data.pack"] * pack)


@pytest.mark.parametrize("attention, reason", [("flex", "FlexAttention has no backward on CPU"),
                                               ("varlen", "needs GPUs and --data.pack")])
def test_gpu_attention_kernels_are_refused_by_a_worker_on_cpu(inputs, attention, reason):
    """A worker that got no GPU although the config asked for one."""
    store, annotations, base, samples = inputs
    cfg = parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
                 str(base), "--model.attention", attention, "--data.pack", "--gpus-per-worker", "1"])
    with pytest.raises(ConfigError, match=reason):
        Recipe(cfg, samples, open_versions(store, cfg.modalities), torch.device("cpu")).setup()


def test_a_step_over_two_micro_batches_reports_plain_numbers(inputs):
    """Recipe.step with gradient accumulation: the loss is summed on the device and read once with the grad norm;
    the report holds plain floats and the data position advances by the micro-batches taken."""
    store, annotations, base, samples = inputs
    cfg = parse(["--store", store, "--annotations", str(annotations), "--out", "/tmp/unused", "--base-model",
                 str(base), "--batch-size", "2", "--patch-d-model", "32", "--lora-r", "8"])
    recipe = Recipe(cfg, samples, open_versions(store, cfg.modalities), torch.device("cpu")).setup()
    batches = recipe.batches()
    micro = [next(batches)[1], next(batches)[1]]
    losses = [recipe.module(b).item() for b in micro]
    recipe.optimizer.zero_grad(set_to_none=True)
    report = recipe.step(micro)
    assert isinstance(report["loss"], float) and isinstance(report["grad_norm"], float)
    assert report["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert report["grad_norm"] > 0 and report["samples"] == 4 and recipe.state.micro == 2 and recipe.state.step == 1
