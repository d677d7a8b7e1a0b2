"""Encoder loading and frame arithmetic, pooling, span masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.models.encoder import EncoderError, load_encoder, read_encoder_info
from trainables.phases.artifacts import encoder_fingerprint
from trainables.models.masking import achieved_ratio, span_mask
from trainables.models.heads import LayerMix, UtteranceClassifier
from trainables.models.pooling import AttentionPooling, AveragePooling, StatisticsPooling, make_pooling, pooled_size
from trainables.phases.acoustic_pretrain import PROSODY_WEIGHTS, mfcc_features, prosody_features, standardise_targets


def test_tiny_encoder_loads_through_the_hf_path(tiny_encoder):
    info = read_encoder_info(tiny_encoder)
    assert info.model_type == "hubert" and info.num_layers == 3 and info.hidden_size == 32
    assert info.total_stride == 320 and info.receptive_field == 400
    assert (tiny_encoder / "model.safetensors").is_file()
    encoder = load_encoder(tiny_encoder)
    assert not any(p.requires_grad for p in encoder.model.feature_extractor.parameters())
    assert encoder.model.config._attn_implementation == "sdpa"  # PyTorch's fused attention kernels on GPU
    assert encoder_fingerprint(tiny_encoder) == encoder_fingerprint(tiny_encoder)


@pytest.mark.parametrize("layer", [-1, 4, 12])
def test_layer_outside_the_encoder_is_refused(tiny_encoder, layer):
    with pytest.raises(EncoderError, match=r"outside the encoder .* 3 transformer layers: choose layer in 0..3"):
        read_encoder_info(tiny_encoder).check_layer(layer)


def test_unreadable_encoder_is_refused(tmp_path):
    with pytest.raises(EncoderError, match="cannot read the encoder config"):
        read_encoder_info(tmp_path)


def test_frames_and_feature_lengths_align_for_many_lengths(tiny_encoder):
    encoder = load_encoder(tiny_encoder).eval()
    rng = np.random.default_rng(0)
    lengths = [400, 401, 719, 720, 1039, 1040, 16000, 16001] + rng.integers(400, 48000, 12).tolist()
    for length in lengths:
        waveform = torch.randn(1, length)
        with torch.no_grad():
            out = encoder(waveform, torch.ones(1, length, dtype=torch.long), output_hidden_states=True)
        expected = encoder.info.frame_count(length)
        assert out.last_hidden.shape[1] == expected == int(out.frame_mask.sum())
        assert all(h.shape[1] == expected for h in out.hidden_states)
        assert mfcc_features(waveform[0], encoder.info).shape == (expected, 39)


def test_padded_batch_frame_mask(tiny_encoder):
    encoder = load_encoder(tiny_encoder).eval()
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 8000:] = 0
    with torch.no_grad():
        out = encoder(torch.randn(2, 16000) * mask, mask)
    assert out.frame_mask.sum(dim=1).tolist() == [encoder.info.frame_count(16000), encoder.info.frame_count(8000)]


@pytest.mark.parametrize("pooling", ["attention", "average", "stats"])
def test_pooling_ignores_padding(pooling):
    torch.manual_seed(0)
    layer = make_pooling(pooling, 8)
    hidden = torch.randn(3, 20, 8)
    assert layer(hidden, torch.ones(3, 20, dtype=torch.bool)).shape == (3, pooled_size(pooling, 8))
    mask = torch.zeros(3, 20, dtype=torch.bool)
    for row, length in enumerate([20, 7, 13]):
        mask[row, :length] = True
    reference = layer(hidden, mask)
    for extra in (1, 5, 40):
        padded = torch.cat([hidden, torch.randn(3, extra, 8) * 100], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], dim=1)
        assert torch.allclose(layer(padded, padded_mask), reference, atol=1e-5)
    garbage = hidden.clone()
    garbage[~mask] = 1e4
    assert torch.allclose(layer(garbage, mask), reference, atol=1e-4)


def test_average_pooling_is_the_mean_and_attention_weights_sum_to_one():
    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    assert torch.allclose(AveragePooling()(hidden, mask), hidden[0, :2].mean(0, keepdim=True))
    attention = AttentionPooling(3)
    attention(hidden, mask)
    assert attention.last_weights[0, 2:].sum() == 0
    assert attention.last_weights.sum() == pytest.approx(1.0)


def test_statistics_pooling_is_the_mean_and_std_of_valid_frames():
    hidden = torch.randn(2, 9, 4)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    pooled = StatisticsPooling()(hidden, mask)
    for row, length in enumerate([9, 5]):
        frames = hidden[row, :length]
        assert torch.allclose(pooled[row], torch.cat([frames.mean(0), frames.std(0, unbiased=False)]), atol=1e-3)


def test_layer_mix_starts_as_the_mean_of_the_layers_and_learns_its_weights():
    states = tuple(torch.full((1, 2, 3), float(i)) for i in range(4))
    mix = LayerMix(4)
    assert torch.allclose(mix(states), torch.full((1, 2, 3), 1.5))
    mix(states).sum().backward()
    assert mix.logits.grad is not None and mix.logits.grad.abs().sum() > 0


@pytest.mark.parametrize(("layers", "pooling"), [("weighted", "stats"), ("weighted", "attention"), ("last", "stats")])
def test_classifier_reads_the_layers_and_pooling_it_is_given(tiny_encoder, layers, pooling):
    torch.manual_seed(0)
    model = UtteranceClassifier(load_encoder(tiny_encoder), pooling, {"emotion": 4}, head_norm="batch", layers=layers)
    waveforms, mask = torch.randn(3, 8000), torch.ones(3, 8000, dtype=torch.long)
    assert model.pooled(waveforms, mask).shape == (3, pooled_size(pooling, 32))
    model(waveforms, mask)["emotion"].sum().backward()
    assert (model.layer_mix is not None) == (layers == "weighted")
    if model.layer_mix is not None:
        assert model.layer_mix.logits.shape == (4,) and model.layer_mix.logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="layers must be one of"):
        UtteranceClassifier(load_encoder(tiny_encoder), pooling, {"emotion": 4}, layers="first")


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_the_encoder_cannot_hear_loudness_and_the_classifier_reads_it_beside(tmp_path, norm):
    """A HuBERT-style CNN makes the frames gain-invariant; UtteranceLoudness gives the level on the encoder's frame grid, padding-free."""
    from trainables.config import TinyEncoderConfig
    from trainables.models.encoder import make_tiny_encoder
    from trainables.models.loudness import UtteranceLoudness

    encoder = load_encoder(make_tiny_encoder(tmp_path / "enc", TinyEncoderConfig(hidden_size=16, num_layers=1, intermediate_size=32, feat_extract_norm=norm))).eval()
    torch.manual_seed(0)
    quiet = 0.2 * torch.randn(1, 9000)
    loud = 8 * quiet
    mask = torch.ones(1, 9000, dtype=torch.long)
    with torch.no_grad():
        # The frames barely move for a gain of 8 (only the norms' epsilon sees it): the encoder cannot hear loudness.
        assert torch.allclose(encoder(quiet, mask).last_hidden, encoder(loud, mask).last_hidden, atol=2e-2)
    loudness = UtteranceLoudness(encoder.info)
    level = loudness(quiet, mask)
    assert torch.allclose(loudness(loud, mask), level + torch.tensor([2 * math.log(8), 0.0]), atol=1e-4)
    frames = quiet[0, : encoder.info.receptive_field + (encoder.info.frame_count(9000) - 1) * encoder.info.total_stride]
    energy = torch.log(frames.unfold(0, encoder.info.receptive_field, encoder.info.total_stride).pow(2).mean(-1) + 1e-8)
    assert energy.numel() == encoder.info.frame_count(9000)
    assert torch.allclose(level[0], torch.stack([energy.mean(), energy.std(unbiased=False)]), atol=1e-4)
    # Padded beside a longer utterance, the same samples give the same level.
    padded = torch.cat([quiet, torch.zeros(1, 4000)], dim=1)
    batch_mask = torch.cat([torch.cat([mask, torch.zeros(1, 4000, dtype=torch.long)], dim=1), torch.ones(1, 13000, dtype=torch.long)])
    assert torch.allclose(loudness(torch.cat([padded, torch.randn(1, 13000)]), batch_mask)[0], level[0], atol=1e-5)
    # A classifier with loudness tells the two apart through its two extra, standardised inputs.
    model = UtteranceClassifier(encoder, "average", {"emotion": 4}, head_norm="batch", loudness=True).eval()
    with torch.no_grad():
        pooled_quiet, pooled_loud = model.pooled(quiet, mask), model.pooled(loud, mask)
    assert pooled_quiet.shape == (1, 16 + 2) and model.heads["emotion"].in_features == 18
    assert torch.allclose(pooled_quiet[:, :16], pooled_loud[:, :16], atol=2e-2)
    assert (pooled_loud[0, 16] - pooled_quiet[0, 16]).item() == pytest.approx(2 * math.log(8), rel=1e-3)  # running variance 1 before calibration


def test_the_spectral_balance_is_the_spectrum_shape_whatever_the_gain_or_padding(tmp_path):
    """UtteranceSpectralBalance: 8 log band powers minus their mean; a gain, padding and a batch neighbour leave it; a tone lands in its band; high-pass tilts it."""
    from trainables.config import TinyEncoderConfig
    from trainables.models.encoder import make_tiny_encoder
    from trainables.models.spectral_balance import SPECTRAL_BANDS, UtteranceSpectralBalance, band_matrix

    encoder = load_encoder(make_tiny_encoder(tmp_path / "enc", TinyEncoderConfig(hidden_size=16, num_layers=1, intermediate_size=32)))
    balance = UtteranceSpectralBalance(encoder.info)
    torch.manual_seed(0)
    noise = torch.randn(1, 16000)
    mask = torch.ones(1, 16000, dtype=torch.long)
    flat = balance(noise, mask)
    assert flat.shape == (1, SPECTRAL_BANDS) and flat.sum().abs() < 1e-4
    assert torch.allclose(balance(8 * noise, mask), flat, atol=1e-4)
    padded = torch.cat([noise, torch.zeros(1, 3000)], dim=1)
    batch_mask = torch.cat([torch.cat([mask, torch.zeros(1, 3000, dtype=torch.long)], dim=1), torch.ones(1, 19000, dtype=torch.long)])
    assert torch.allclose(balance(torch.cat([padded, torch.randn(1, 19000)]), batch_mask)[0], flat[0], atol=1e-4)
    # White noise: each band's power grows with its width, so the balance rises band by band.
    assert (flat[0, 1:] > flat[0, :-1]).all()
    # A 1 kHz tone puts its band far above the others.
    tone = torch.sin(2 * math.pi * 1000 * torch.arange(16000) / 16000)[None]
    bands = band_matrix(16000, balance.window_length)
    freqs = torch.arange(bands.shape[1]) * 16000 / balance.window_length
    assert balance(tone, mask)[0].argmax().item() == bands[:, (freqs - 1000).abs().argmin()].argmax().item()
    # A first difference (pre-emphasis, +6 dB/octave) tilts the balance towards the high bands.
    emphasised = torch.nn.functional.pad(noise[:, 1:] - 0.97 * noise[:, :-1], (1, 0))
    tilt = balance(emphasised, mask) - flat
    assert tilt[0, -1] - tilt[0, 0] > 3.0
    with pytest.raises(ValueError, match="empty band"):
        band_matrix(800, 26)


@pytest.mark.parametrize(
    ("layers", "pooling", "head_norm", "loudness", "spectral"),
    [("weighted", "stats", "batch", False, False), ("last", "attention", "none", False, False), ("weighted", "average", "batch", True, True),
     ("last", "stats", "none", True, False), ("last", "average", "batch", False, True)],
)
def test_saved_and_exported_classifiers_score_as_the_trained_one(tiny_encoder, tmp_path, layers, pooling, head_norm, loudness, spectral):
    from study.export.hf import to_huggingface
    from trainables.phases.classifier import load_classifier, save_classifier

    torch.manual_seed(0)
    model = UtteranceClassifier(load_encoder(tiny_encoder), pooling, {"emotion": 4}, head_norm=head_norm, layers=layers, loudness=loudness, spectral_balance=spectral)
    model.train()
    for _ in range(3):  # running statistics and layer weights away from their initial values
        model(torch.randn(4, 8000) * torch.tensor([[0.1], [0.5], [1.0], [2.0]]), torch.ones(4, 8000, dtype=torch.long))["emotion"].sum().backward()
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter -= 0.1 * parameter.grad
    model.eval()
    classes = ["neu", "hap", "ang", "sad"]
    save_classifier(model, classes, tmp_path)
    loaded, loaded_classes = load_classifier(tmp_path)
    waveform, mask = torch.randn(1, 12000), torch.ones(1, 12000, dtype=torch.long)
    with torch.no_grad():
        expected = model(waveform, mask)["emotion"]
        assert loaded_classes == classes and torch.allclose(loaded(waveform, mask)["emotion"], expected, atol=1e-5)
        exported = to_huggingface(model, classes)
        assert exported.config.layers == layers and exported.config.pooling == pooling and exported.config.loudness == loudness
        assert exported.config.spectral_balance == spectral
        assert torch.allclose(exported(waveform, mask).logits, expected, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 0.8])
def test_span_mask_reaches_the_requested_ratio(ratio):
    rng = np.random.default_rng(1)
    lengths = torch.tensor(rng.integers(20, 1500, 32))
    mask = span_mask(lengths, int(lengths.max()), ratio, rng)
    # Per utterance the masked count is round(ratio * frames): within 0.5 frame of the request.
    per_utterance = mask.sum(dim=1).float()
    assert torch.all((per_utterance - ratio * lengths).abs() <= 0.5 + 1e-6)
    assert abs(achieved_ratio(mask, lengths) - ratio) < 0.005
    for row, length in enumerate(lengths.tolist()):
        assert not mask[row, length:].any(), "padding must never be masked"


def test_span_mask_uses_spans_and_rejects_bad_ratio():
    rng = np.random.default_rng(2)
    mask = span_mask(torch.tensor([1000]), 1000, 0.2, rng, span=10)[0].numpy().astype(int)
    starts = np.flatnonzero(np.diff(np.concatenate([[0], mask])) == 1)
    assert len(starts) <= 20, "200 masked frames in spans of 10 make at most 20 runs"
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mask_ratio must be in"):
            span_mask(torch.tensor([100]), 100, bad, rng)


@pytest.fixture(scope="module")
def group_norm_encoder(tmp_path_factory):
    from trainables.config import TinyEncoderConfig
    from trainables.models.encoder import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("gn") / "enc", TinyEncoderConfig(hidden_size=32, num_layers=2, intermediate_size=64, feat_extract_norm="group"))


def _alone_and_padded(encode) -> tuple[torch.Tensor, torch.Tensor]:
    """A 0.5 s utterance's last hidden frames ``[F, H]`` encoded alone and zero-padded beside a 1 s one."""
    short, long = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0)), torch.randn(1, 16000)
    batch, mask = torch.zeros(2, 16000), torch.zeros(2, 16000, dtype=torch.long)
    batch[0, :8000], batch[1] = short[0], long[0]
    mask[0, :8000], mask[1] = 1, 1
    with torch.no_grad():
        alone = encode(short, torch.ones_like(short, dtype=torch.long))[0]
        padded = encode(batch, mask)[0, : alone.shape[0]]
    return alone, padded


def test_a_group_norm_encoder_gives_a_padded_utterance_the_frames_it_has_alone(group_norm_encoder):
    """HF's group norm takes its statistics over the padding too; the masked norm over the valid samples only."""
    from trainables.models.masked_norm import MaskedGroupNorm, first_group_norm

    encoder = load_encoder(group_norm_encoder).eval()
    assert encoder.info.group_norm and encoder.padding_invariant and isinstance(first_group_norm(encoder.model), MaskedGroupNorm)
    alone, padded = _alone_and_padded(lambda w, m: encoder(w, m).last_hidden)
    assert (padded - alone).abs().max() < 1e-4
    # The same weights through HF's own forward (plain group norm: no lengths are set) differ: the masked norm is what makes them equal.
    alone, padded = _alone_and_padded(lambda w, m: encoder.model(w, attention_mask=m).last_hidden_state)
    assert (padded - alone).abs().max() > 1e-3


def test_the_masked_group_norm_is_group_norm_on_the_valid_positions():
    from trainables.models.masked_norm import MaskedGroupNorm

    norm = MaskedGroupNorm(4, 8, affine=True)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    hidden = torch.randn(3, 8, 20)
    assert torch.allclose(norm(hidden), F.group_norm(hidden, 4, norm.weight, norm.bias, norm.eps), atol=1e-6)  # no lengths: plain
    with norm.valid_lengths(torch.tensor([20, 7, 1])):
        masked = norm(hidden)
    assert norm.lengths is None
    for row, length in enumerate((20, 7, 1)):
        expected = F.group_norm(hidden[row : row + 1, :, :length], 4, norm.weight, norm.bias, norm.eps)
        assert torch.allclose(masked[row : row + 1, :, :length], expected, atol=1e-5)
    # Gradients too: a loss on the valid positions reaches the input as it does through group norm on them alone.
    leaf = hidden.clone().requires_grad_()
    with norm.valid_lengths(torch.tensor([20, 7, 1])):
        norm(leaf)[1:2, :, :7].square().sum().backward()
    alone = hidden[1:2, :, :7].clone().requires_grad_()
    F.group_norm(alone, 4, norm.weight, norm.bias, norm.eps).square().sum().backward()
    assert torch.allclose(leaf.grad[1:2, :, :7], alone.grad, atol=1e-4) and not leaf.grad[1:2, :, 7:].any() and not leaf.grad[0].any()
    # Under mixed precision (bf16 autocast, as training on a GPU) the statistics stay float32, as autocast keeps group_norm.
    offset = hidden * 5 + 3
    with norm.valid_lengths(torch.tensor([20, 7, 1])):
        full = norm(offset)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.allclose(norm(offset), full, atol=1e-5)
    unscaled = MaskedGroupNorm(8, 8, affine=False)
    with unscaled.valid_lengths(torch.tensor([20, 7, 1])):
        assert torch.allclose(unscaled(hidden)[1:2, :, :7], F.group_norm(hidden[1:2, :, :7], 8, eps=unscaled.eps), atol=1e-5)


def test_embedding_an_utterance_alone_or_in_a_batch_gives_the_same_frames(group_norm_encoder, small_utterances, tmp_path):
    from trainables.phases.embeddings import load_layer, read_index, run_embeddings
    from trainables.runtime import LocalRuntime

    utterances = sorted(small_utterances[:6], key=lambda u: u.duration_s)  # different lengths, one batch by the budget
    run_embeddings(group_norm_encoder, utterances, [2], tmp_path / "batch", LocalRuntime(), max_batch_seconds=1000.0)
    run_embeddings(group_norm_encoder, utterances[:1], [2], tmp_path / "alone", LocalRuntime(), max_batch_seconds=1000.0)
    _, offsets = read_index(tmp_path / "batch")
    in_batch = np.asarray(load_layer(tmp_path / "batch", 2)[: offsets[1]], dtype=np.float32)
    alone = np.asarray(load_layer(tmp_path / "alone", 2), dtype=np.float32)
    # Stored as float16: batching may move a value by one unit in its last place (0.002 for values up to 4).
    assert in_batch.shape == alone.shape and np.abs(in_batch - alone).max() < 4e-3


def test_the_audio_settings_are_the_feature_extractors(tiny_encoder, tmp_path):
    import json
    import shutil

    assert (tiny_encoder / "preprocessor_config.json").is_file()  # saved with the encoder, for AutoFeatureExtractor
    copy = tmp_path / "enc"
    shutil.copytree(tiny_encoder, copy)
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "do_normalize": True, "sampling_rate": 16000}))
    assert read_encoder_info(copy).normalize is True and read_encoder_info(tiny_encoder).normalize is False


def test_load_encoder_sets_the_attention_dropout_or_keeps_the_checkpoints(tiny_encoder):
    rates = lambda encoder: {m.dropout for m in encoder.model.modules() if type(m).__name__.endswith("Attention")}  # noqa: E731
    assert rates(load_encoder(tiny_encoder)) == {0.1}
    assert rates(load_encoder(tiny_encoder, attention_dropout=0.0)) == {0.0}


def test_freezing_the_cnn_builds_no_graph_through_it(tiny_encoder):
    encoder = load_encoder(tiny_encoder).train()
    waveforms = torch.randn(2, 8000)
    features = encoder.model.feature_extractor(waveforms)
    assert not features.requires_grad  # HF's freezing: not only the parameters, the input needs no gradient either


def test_pretraining_targets_spread_log_f0_over_the_voiced_frames(tiny_encoder):
    """Low and high voiced tones and near-silence: after standardisation the two pitches sit at -1 and +1 (times their weight), unvoiced frames at 0."""
    info = read_encoder_info(tiny_encoder)
    t = torch.arange(16000) / 16000
    tones = [sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 6)) for f0 in (110.0, 220.0)]
    silence = 1e-4 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    prosody = np.concatenate([prosody_features(w, info) for w in (*tones, silence)])
    frames = np.concatenate([np.zeros((len(prosody), 39), dtype=np.float32), prosody], axis=1)
    voiced = prosody[:, 1] > 0
    assert voiced.sum() == 2 * info.frame_count(16000)  # both tones voiced, the near-silence not
    log_f0 = standardise_targets(frames, prosody=True)[:, -2]
    assert np.all(log_f0[~voiced] == 0)
    assert np.allclose(np.sort(np.unique(log_f0[voiced].round(3))), [-PROSODY_WEIGHTS[1], PROSODY_WEIGHTS[1]], atol=0.01)
    assert standardise_targets(frames, prosody=False).shape == frames.shape


@pytest.mark.parametrize("f0", [75.0, 95.0, 150.0, 220.0, 300.0, 390.0])
def test_prosody_features_find_the_pitch_of_low_and_high_voices(tiny_encoder, f0):
    """A noisy harmonic tone: every frame voiced, at its pitch (no octave errors), where white noise is unvoiced."""
    info = read_encoder_info(tiny_encoder)
    t = torch.arange(16000) / 16000
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(int(f0)))
    tone = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 6)) + 0.3 * noise
    prosody = prosody_features(tone, info)
    assert prosody.shape == (info.frame_count(16000), 3) and np.all(prosody[:, 1] > 0)
    assert np.allclose(np.exp(prosody[:, 1]), f0, rtol=0.03)
    assert not np.any(prosody_features(noise, info)[:, 1] > 0)


def test_inference_batches_stay_in_a_cpus_caches_and_fill_a_gpu(group_norm_encoder):
    """On a CPU the first CNN activation of a batch stays under 32 MiB (bench/results/cpu_batches.md); elsewhere the budget alone counts."""
    from dataclasses import replace

    encoder = load_encoder(group_norm_encoder)
    durations = [2.0] * 100
    tiny = encoder.info.first_conv_channels  # 4 bytes x channels x 3200 first-layer positions per second
    cpu_cap = 32 * 2**20 / (4 * tiny * 3200)
    assert max(map(len, encoder.inference_batches(durations, 320.0, torch.device("cpu")))) == int(cpu_cap // 2)
    assert max(map(len, encoder.inference_batches(durations, 20.0, torch.device("cpu")))) == 10  # the budget, when smaller
    assert [len(b) for b in encoder.inference_batches(durations, 320.0, torch.device("cuda"))] == [100]
    encoder.info = replace(encoder.info, first_conv_channels=512)  # HuBERT-base's CNN: 5.1 s per batch on a CPU
    assert max(map(len, encoder.inference_batches(durations, 320.0, torch.device("cpu")))) == 2


def test_a_group_norm_classifier_and_its_export_score_a_padded_utterance_as_alone(group_norm_encoder):
    from study.export.hf import to_huggingface

    torch.manual_seed(0)
    model = UtteranceClassifier(load_encoder(group_norm_encoder), "attention", {"emotion": 4}, head_norm="batch").eval()
    exported = to_huggingface(model, ["neu", "hap", "ang", "sad"])
    with torch.no_grad():
        alone, padded = _alone_and_padded(lambda w, m: model(w, m)["emotion"])
        assert torch.allclose(padded, alone, atol=1e-5)
        alone, padded = _alone_and_padded(lambda w, m: exported(w, m).logits)
        assert torch.allclose(padded, alone, atol=1e-5)
