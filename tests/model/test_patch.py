"""PavePatch: zero-init no-op, time-local neighbourhoods (perturbation + gradients), batched == per sample ==
a naive per-frame loop, empty windows, parameter count of the reference 7B preset."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import modeldata
from model.patch import PRESETS, PatchConfig, PavePatch, SideBatch, VideoBatch

Q = 3


def live_patch(seed=0, **overrides) -> PavePatch:
    """A small patch whose zero-init output LayerNorm got random weights, so that it has an effect."""
    torch.manual_seed(seed)
    cfg = modeldata.SMALL if not overrides else type(modeldata.SMALL)(**{**vars(modeldata.SMALL), **overrides})
    patch = PavePatch(cfg).eval()
    torch.nn.init.normal_(patch.out[-1].weight)
    torch.nn.init.normal_(patch.out[-1].bias)
    return patch


def naive(patch: PavePatch, video: VideoBatch, samples, w: float) -> torch.Tensor:
    """One frame at a time, keys selected by the overlap rule directly, attention written out."""
    cfg = patch.config
    B, n_frames = video.times.shape
    H, hd = cfg.num_heads, cfg.d_model // cfg.num_heads
    out = torch.zeros(B, n_frames, Q, cfg.llm_dim)
    for b, (tokens, t0, t1) in enumerate(samples):
        for k in range(n_frames if video.mask is None else int(video.mask[b].sum())):
            t = video.times[b, k]
            keys = patch.side_in(tokens[(t0 <= t + w) & (t1 >= t - w)]).flatten(0, 1)
            if len(keys) == 0:
                continue
            x = patch.query_in(video.features[b, k])
            for layer in patch.layers:
                q, k_, v = (lin(src).view(len(src), H, hd).transpose(0, 1)
                            for lin, src in ((layer.attn.q, x), (layer.attn.k, keys), (layer.attn.v, keys)))
                att = torch.softmax(q @ k_.transpose(1, 2) / math.sqrt(hd), dim=-1) @ v
                x = att.transpose(0, 1).reshape(len(x), -1) + x
                x = layer.ffn(x) + x
            out[b, k] = patch.out(x)
    return out


def test_fresh_patch_outputs_exact_zeros_and_is_trainable():
    torch.manual_seed(0)
    patch = PavePatch(modeldata.SMALL)
    video = modeldata.video([4, 2], Q, 20)
    side = modeldata.side_batch([9, 5], 2, 12, duration=8.0)
    out = patch(video, side)
    assert out.shape == (2, 4, Q, 24) and torch.equal(out, torch.zeros_like(out))
    (out * torch.randn_like(out)).sum().backward()  # the zero-init LayerNorm still gets gradients
    assert patch.out[-1].weight.grad.abs().sum() > 0 and patch.out[-1].bias.grad.abs().sum() > 0


@pytest.mark.parametrize("window,w", [(None, 1.0), (0.4, 0.4), (2.5, 2.5)])  # default: half the 2 s frame spacing
def test_matches_naive_per_frame_loop(window, w):
    patch = live_patch(window=window)
    video = modeldata.video([6, 3, 5], Q, 20)
    samples = [modeldata.side_sample(n, 2, 12, duration=12.0, seed=n) for n in (11, 4, 17)]
    # steps deliberately unsorted: the batched path must not depend on the order
    side = SideBatch(torch.cat([s[0] for s in samples]), torch.cat([s[1] for s in samples]),
                     torch.cat([s[2] for s in samples]), torch.tensor([0, 11, 15, 32]))
    with torch.no_grad():
        got, want = patch(video, side), naive(patch, video, samples, w)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert (want.abs().sum(-1) > 0).sum() >= 8  # the check compares real, non-trivial outputs


def test_side_step_only_affects_frames_whose_window_it_overlaps():
    patch = live_patch()
    video = VideoBatch(torch.randn(1, 4, Q, 20), torch.tensor([[0.0, 2.0, 4.0, 6.0]]))  # windows +-1 s
    t_start = torch.tensor([0.2, 2.5, 2.5, 6.5])
    t_end = torch.tensor([0.2, 2.5, 3.5, 8.0])  # step 2 spans frames 1 and 2 (closed intervals)
    tokens = torch.randn(4, 2, 12)
    base = patch(video, SideBatch(tokens, t_start, t_end, torch.tensor([0, 4]))).detach()
    for step, affected in [(0, {0}), (1, {1}), (2, {1, 2}), (3, {3})]:
        perturbed = tokens.clone()
        perturbed[step, 1] += 5.0  # one token of a multi-token step
        out = patch(video, SideBatch(perturbed, t_start, t_end, torch.tensor([0, 4]))).detach()
        for k in range(4):
            assert torch.equal(out[0, k], base[0, k]) == (k not in affected), (step, k)


@pytest.mark.parametrize("window", [None, 0.7])
def test_gradient_reaches_exactly_the_overlapping_steps(window):
    patch = live_patch(window=window)
    video = modeldata.video([5, 4], Q, 20)
    side = modeldata.side_batch([13, 8], 3, 12, duration=10.0, seed=3)
    w = 1.0 if window is None else window
    tokens = side.tokens.clone().requires_grad_()
    out = patch(video, SideBatch(tokens, side.t_start, side.t_end, side.offsets))
    n_checked = 0
    for b in range(2):
        lo, hi = side.offsets[b : b + 2].tolist()
        for k in range(int(video.mask[b].sum())):
            (grad,) = torch.autograd.grad(out[b, k].sum(), tokens, retain_graph=True)
            touched = grad.abs().sum(dim=(1, 2)) > 0
            t = video.times[b, k]
            expected = (side.t_start <= t + w) & (side.t_end >= t - w)
            expected &= (torch.arange(len(tokens)) >= lo) & (torch.arange(len(tokens)) < hi)
            assert torch.equal(touched, expected), (b, k)
            n_checked += int(expected.sum())
    assert n_checked > 10


def test_batched_equals_per_sample_with_varlen_side_and_frames():
    patch = live_patch()
    lengths, frames = [7, 0, 23], [5, 3, 6]
    video = modeldata.video(frames, Q, 20, seed=1)
    samples = [modeldata.side_sample(n, 2, 12, duration=12.0, seed=i) for i, n in enumerate(lengths)]
    with torch.no_grad():
        batched = patch(video, SideBatch.pack(samples))
        for b in range(3):
            alone = patch(modeldata.subset(video, b), SideBatch.pack([samples[b]]))[0]
            torch.testing.assert_close(batched[b, : frames[b]], alone, atol=1e-6, rtol=1e-5)
            assert torch.equal(batched[b, frames[b]:], torch.zeros_like(batched[b, frames[b]:]))  # padded frames
    assert batched[0].abs().sum() > 0 and batched[2].abs().sum() > 0
    assert torch.equal(batched[1], torch.zeros_like(batched[1]))  # a sample without this side channel


def test_empty_window_gives_exact_zero_and_no_gradient():
    """Side channel shorter than the video: frames whose window holds no side token are left unchanged."""
    patch = live_patch()
    video = VideoBatch(torch.randn(1, 8, Q, 20, requires_grad=True), torch.arange(8.0)[None] * 2)  # 0..14 s
    t_start = torch.arange(0.0, 3.0, 0.5)
    side = SideBatch(torch.randn(6, 1, 12), t_start, t_start + 0.5, torch.tensor([0, 6]))  # covers [0, 3] s
    out = patch(video, side)
    assert (out[0, :3].abs().sum(dim=(1, 2)) > 0).all()  # frame at 4 s: window [3, 5] touches the step ending at 3
    assert torch.equal(out[0, 3:], torch.zeros_like(out[0, 3:]))
    out.sum().backward()
    assert torch.equal(video.features.grad[0, 3:], torch.zeros_like(video.features.grad[0, 3:]))
    assert video.features.grad[0, :3].abs().sum() > 0
    no_side = SideBatch(torch.zeros(0, 1, 12), torch.zeros(0), torch.zeros(0), torch.tensor([0, 0]))
    assert torch.equal(patch(video, no_side), torch.zeros(1, 8, Q, 24))


def test_single_frame_sees_the_whole_side_channel_and_bf16_runs():
    patch = live_patch()
    video = VideoBatch(torch.randn(1, 1, Q, 20), torch.tensor([[50.0]]))  # no spacing: w = inf
    side = modeldata.side_batch([5], 2, 12, duration=3.0)
    with torch.no_grad():
        want = naive(patch, video, [(side.tokens, side.t_start, side.t_end)], math.inf)
        torch.testing.assert_close(patch(video, side), want, atol=2e-5, rtol=1e-4)
        out = patch.to(torch.bfloat16)(video, side)
    assert out.dtype == torch.bfloat16 and out.abs().sum() > 0


def test_reference_7b_preset_has_9m_parameters():
    n = sum(p.numel() for p in PavePatch(PRESETS["7b"]).parameters())
    assert abs(n - 9.0e6) / 9.0e6 < 0.02, n
    assert PRESETS["7b"].num_layers == 2 and PRESETS["0.5b"].llm_dim == 896


def test_save_and_load_round_trip(tmp_path):
    patch = live_patch(seed=4)
    patch.save_pretrained(tmp_path / "p")
    loaded = PavePatch.from_pretrained(tmp_path / "p").eval()
    assert loaded.config == patch.config
    video = modeldata.video([3], Q, 20)
    side = modeldata.side_batch([6], 2, 12, duration=6.0)
    assert torch.equal(loaded(video, side), patch(video, side))


def test_loss_gradient_flows_to_every_patch_parameter():
    patch = live_patch().train()
    out = patch(modeldata.video([4, 4], Q, 20), modeldata.side_batch([9, 5], 2, 12, duration=8.0))
    F.mse_loss(out, torch.randn_like(out)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in patch.parameters())


def test_a_patch_with_v_tied_to_k_has_no_v_projection_and_saves_and_loads(tmp_path):
    patch = PavePatch(PatchConfig(side_dim=6, query_dim=5, llm_dim=7, d_model=8, num_heads=2, tie_v_to_k=True))
    assert not [name for name in patch.state_dict() if ".attn.v." in name]
    for p in patch.parameters():
        torch.nn.init.normal_(p)
    video = VideoBatch(torch.randn(1, 2, 3, 5), torch.tensor([[0.5, 1.5]]))
    side = SideBatch.pack([(torch.randn(4, 1, 6), torch.arange(4.0) / 2, torch.arange(4.0) / 2 + 0.5)])
    patch.save_pretrained(tmp_path)
    loaded = PavePatch.from_pretrained(tmp_path)
    assert loaded.config.tie_v_to_k
    with torch.no_grad():
        torch.testing.assert_close(loaded(video, side), patch(video, side))
        untied = PavePatch(replace(patch.config, tie_v_to_k=False))
        untied.load_state_dict({**patch.state_dict(), **{k.replace(".k.", ".v."): v for k, v in
                                                       patch.state_dict().items() if ".attn.k." in k}})
        torch.testing.assert_close(untied(video, side), patch(video, side))  # V = K projection, nothing else
        untied.layers[0].attn.v.weight.add_(0.1)
        assert not torch.allclose(untied(video, side), patch(video, side))
    with pytest.raises(ValueError, match="patch neighbourhood 'chunks': expected one of time, official"):
        PatchConfig(neighbourhood="chunks")
