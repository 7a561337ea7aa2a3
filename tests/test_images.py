"""The real-image forward–backward experiment: data, diffusion, exact references, probes,
training and resume, the experiment against exact posteriors, and bad inputs."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rhm_jax.images import (EpsPredictor, MiniatureConfig, RespacedSchedule, UNetConfig,
                            ddpm_loss, forward_backward, from_arrays, gaussian_denoiser,
                            load_digits, memorising_denoiser, memorising_log_weights,
                            nearest_neighbour_probe, noised_starts, q_sample, reverse_chain,
                            run_miniature, to_rows, train_unet)
from rhm_jax.images.experiment import _sharded_chunk
from rhm_jax.images.probe import whitening_stats
from rhm_jax.images.references import posterior_mean
from rhm_jax.images.train import ImageRunConfig, epoch_batch_indices
from rhm_jax.schedules import LinearBeta
from rhm_jax.sharding import data_mesh

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _images(n, shape=(2, 2, 1), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


# ---- data ---------------------------------------------------------------------------------
def test_digits_are_split_once_and_normalised(digits):
    assert digits.train_images.shape == (1438, 8, 8, 1)
    assert digits.test_images.shape == (359, 8, 8, 1)
    assert digits.train_images.dtype == np.float32
    assert digits.train_images.min() == -1.0 and digits.train_images.max() == 1.0
    assert sorted(np.unique(digits.train_labels)) == list(range(10))
    again = load_digits()
    np.testing.assert_array_equal(again.test_images, digits.test_images)
    other = load_digits(seed=1)
    assert not np.array_equal(other.test_labels, digits.test_labels)


def test_from_arrays_normalises_uint8_and_float_alike_and_splits_disjointly():
    pixels = np.arange(40, dtype=np.uint8).reshape(10, 2, 2) * 6  # NHW, 0..234
    labels = np.arange(10) % 3
    a = from_arrays(pixels, labels, test_fraction=0.3, seed=4)
    b = from_arrays(pixels[..., None].astype(np.float64) / 255.0, labels, test_fraction=0.3,
                    seed=4)
    np.testing.assert_allclose(a.train_images, b.train_images, atol=1e-6)
    assert a.train_images.shape == (7, 2, 2, 1) and a.test_images.shape == (3, 2, 2, 1)
    # every image lands in exactly one split (pixel 0 of image i is 24 i)
    seen = np.concatenate([a.train_images, a.test_images])[:, 0, 0, 0]
    np.testing.assert_allclose(np.sort(seen), np.arange(10) * 24 / 127.5 - 1, atol=1e-6)
    assert a.num_classes == 3


@pytest.mark.parametrize("images,labels,kwargs,error,match", [
    (np.zeros((4, 2)), [0] * 4, {}, ValueError, "shape"),
    (np.zeros((0, 2, 2)), [], {}, ValueError, "empty"),
    (np.zeros((4, 2, 2), np.int32), [0] * 4, {}, TypeError, "uint8"),
    (np.full((4, 2, 2), 1.5), [0] * 4, {}, ValueError, r"\[0, 1\]"),
    (np.full((4, 2, 2), np.nan), [0] * 4, {}, ValueError, r"\[0, 1\]"),
    (np.zeros((4, 2, 2)), [0, 1, 2], {}, ValueError, "labels must have shape"),
    (np.zeros((4, 2, 2)), [0.0, 1.0, 0.0, 1.0], {}, TypeError, "integer"),
    (np.zeros((4, 2, 2)), [0, 1, 2, 3], {"num_classes": 3}, ValueError, r"labels\[3\] = 3"),
    (np.zeros((4, 2, 2)), [0, -1, 0, 0], {}, ValueError, r"labels\[1\] = -1"),
    (np.zeros((2, 2, 2)), [0, 1], {"test_fraction": 0.1}, ValueError, "both splits"),
    (np.zeros((4, 2, 2)), [0] * 4, {"test_fraction": 1.0}, ValueError, "test_fraction"),
    ("pixels", [0], {}, TypeError, "images"),
])
def test_from_arrays_refuses_bad_input(images, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        from_arrays(images, labels, **kwargs)


# ---- schedule and diffusion -----------------------------------------------------------------
def test_respacing_keeps_every_step_at_K_equal_T_and_follows_the_fractional_stride():
    base = LinearBeta()
    full = RespacedSchedule(base.T)
    np.testing.assert_array_equal(full.kept_steps(), np.arange(1, base.T + 1))
    np.testing.assert_allclose(full.alpha_bars(),
                               np.asarray(base.alpha_bar_at_step(np.arange(base.T + 1))),
                               rtol=1e-6)
    sched = RespacedSchedule(250)
    kept = sched.kept_steps()
    assert kept[0] == 1 and kept[-1] == base.T and len(np.unique(kept)) == 250
    np.testing.assert_array_equal(kept, 1 + np.round(np.arange(250) * 999 / 249))
    # β recomputed from consecutive ᾱ: the product of (1 - β) gives ᾱ back
    betas = np.asarray(sched.beta(np.arange(1, 251)), np.float64)
    np.testing.assert_allclose(np.cumprod(1 - betas), sched.alpha_bars()[1:], rtol=1e-4)
    assert RespacedSchedule(1).kept_steps().tolist() == [base.T]


@pytest.mark.parametrize("call,error,match", [
    (lambda: RespacedSchedule(0), ValueError, r"num_steps = 0 must be in \[1, 1000\]"),
    (lambda: RespacedSchedule(1001), ValueError, "num_steps = 1001"),
    (lambda: RespacedSchedule(2.5), TypeError, "num_steps must be an integer"),
    (lambda: RespacedSchedule(10).alpha_bar(11), ValueError, r"k = 11 must be an integer step in \[0, K = 10\]"),
    (lambda: RespacedSchedule(10).beta(0), ValueError, r"k = 0 .* \[1, K = 10\]"),
    (lambda: RespacedSchedule(10).alpha_bar(1.0), TypeError, "integer step"),
    (lambda: q_sample(jax.random.key(0), jnp.zeros((2, 2, 2, 1)), 11, RespacedSchedule(10)),
     ValueError, "k = 11"),
    (lambda: q_sample(jax.random.key(0), jnp.zeros((2, 2)), 1, RespacedSchedule(10)),
     ValueError, r"x0 must have shape \(n, H, W, C\)"),
    (lambda: q_sample(0, jnp.zeros((2, 2, 2, 1)), 1, RespacedSchedule(10)), TypeError, "key"),
])
def test_diffusion_refuses_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_q_sample_is_the_closed_form_with_the_key_s_noise():
    sched = RespacedSchedule(50)
    x0, key, k = jnp.asarray(_images(3)), jax.random.key(7), jnp.array([1, 20, 50])
    ab = sched.alpha_bars()[np.asarray(k)][:, None, None, None]
    want = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * np.asarray(jax.random.normal(key, x0.shape))
    np.testing.assert_allclose(q_sample(key, x0, k, sched), want, rtol=1e-5, atol=1e-5)


def test_ddpm_loss_of_the_zero_predictor_is_the_noise_s_variance():
    """ε̂ = 0 scores E[ε²] = 1 per pixel: the mean over images within 4 standard errors."""
    x0 = jnp.asarray(_images(4000, (2, 2, 1)))
    loss = np.asarray(ddpm_loss(lambda x, k: jnp.zeros_like(x), jax.random.key(0), x0,
                                RespacedSchedule(10)))
    se = loss.std() / math.sqrt(len(loss))
    assert abs(loss.mean() - 1.0) < 4 * se


def test_chain_ends_on_the_single_training_image_and_rows_do_not_depend_on_the_batch():
    """With one training image the exact denoiser knows x0: every chain ends on it. And a
    row's chain is the same alone as in a batch (its noise comes from its own key)."""
    sched = RespacedSchedule(20)
    point = _images(1)
    eps = memorising_denoiser(point, sched)
    keys = jax.random.split(jax.random.key(1), 4)
    x_k = jnp.asarray(_images(4, seed=3))
    k = jnp.array([1, 5, 12, 20])
    out = reverse_chain(keys, eps, x_k, k, sched)
    np.testing.assert_allclose(out, np.broadcast_to(point, out.shape), atol=1e-5)
    gaussian_eps = EpsPredictor(lambda params, x, k: 0.5 * x, None)
    batch = reverse_chain(keys, gaussian_eps, x_k, k, sched)
    alone = reverse_chain(keys[2:3], gaussian_eps, x_k[2:3], k[2:3], sched)
    np.testing.assert_allclose(batch[2:3], alone, atol=1e-6)
    # step 0 leaves the image as it is
    still = reverse_chain(keys[:1], gaussian_eps, x_k[:1], jnp.array([0]), sched)
    np.testing.assert_array_equal(still, x_k[:1])


# ---- exact references ---------------------------------------------------------------------
def _log_density(train, labels, kind, ridge=1e-3):
    """``log p(x_k)`` of the model of each reference, written independently (dense
    covariances, no eigenbasis, no streaming), for Tweedie: ``ε̂ = -√(1-ᾱ) ∇ log p``."""
    flat = jnp.asarray(train.reshape(len(train), -1), jnp.float64)
    if kind == "memorising":
        def log_p(x, ab):
            sq = jnp.sum((x[None] - jnp.sqrt(ab) * flat) ** 2, axis=1)
            return jax.scipy.special.logsumexp(-sq / (2 * (1 - ab)))
        return log_p
    comps = []
    for c in np.unique(labels):
        members = flat[labels == c]
        mean = members.mean(0)
        cov = (members - mean).T @ (members - mean) / len(members) + ridge * jnp.eye(flat.shape[1])
        comps.append((mean, cov, math.log(len(members) / len(flat))))

    def log_p(x, ab):
        terms = [prior + jax.scipy.stats.multivariate_normal.logpdf(
            x, jnp.sqrt(ab) * m, ab * cov + (1 - ab) * jnp.eye(len(m))) for m, cov, prior in comps]
        return jax.scipy.special.logsumexp(jnp.stack(terms))
    return log_p


@pytest.mark.parametrize("kind", ["memorising", "gaussian"])
def test_references_satisfy_tweedie(kind):
    """ε̂ = -√(1-ᾱ) ∇_x log p(x_k), the gradient of an independent float64 density."""
    sched = RespacedSchedule(50)
    train, labels = _images(23, (2, 2, 2), seed=1), np.arange(23) % 3
    eps = (memorising_denoiser(train, sched, chunk_size=5) if kind == "memorising"
           else gaussian_denoiser(train, labels, sched))
    x_k = _images(4, (2, 2, 2), seed=2) * 1.5
    k = np.array([8, 15, 30, 50])
    got = np.asarray(eps(jnp.asarray(x_k), jnp.asarray(k)))
    with jax.enable_x64(True):
        log_p = _log_density(train, labels, kind)
        for i in range(4):
            ab = float(sched.alpha_bars()[k[i]])
            grad = jax.grad(log_p)(jnp.asarray(x_k[i].ravel(), jnp.float64), ab)
            want = -math.sqrt(1 - ab) * np.asarray(grad)
            np.testing.assert_allclose(got[i].ravel(), want, rtol=2e-3, atol=2e-4)


def test_gaussian_reference_on_one_class_is_the_wiener_filter():
    """One class: E[x0|x_k] = m + √ᾱ Σ (ᾱΣ + (1-ᾱ)I)^{-1} (x_k - √ᾱ m), closed form."""
    sched = RespacedSchedule(100)
    rng = np.random.default_rng(5)
    mixing = rng.normal(size=(8, 8)) * 0.3
    train = (rng.normal(size=(200, 8)) @ mixing + 0.2).reshape(200, 2, 2, 2).astype(np.float32)
    eps = gaussian_denoiser(train, np.zeros(200, int), sched, ridge=1e-2)
    flat = train.reshape(200, -1).astype(np.float64)
    m = flat.mean(0)
    cov = (flat - m).T @ (flat - m) / 200 + 1e-2 * np.eye(8)
    x_k = rng.normal(size=(3, 2, 2, 2)).astype(np.float32)
    k = np.array([3, 40, 90])
    got = np.asarray(posterior_mean(eps, jnp.asarray(x_k), jnp.asarray(k), sched))
    for i in range(3):
        ab = sched.alpha_bars()[k[i]]
        want = m + math.sqrt(ab) * cov @ np.linalg.solve(
            ab * cov + (1 - ab) * np.eye(8), x_k[i].ravel() - math.sqrt(ab) * m)
        np.testing.assert_allclose(got[i].ravel(), want, atol=2e-4)


def test_memorising_reference_is_chunk_free_and_its_weights_are_a_distribution():
    sched = RespacedSchedule(30)
    train = _images(50, seed=4)
    x_k, k = jnp.asarray(_images(6, seed=5)), jnp.array([1, 3, 8, 15, 22, 30])
    whole = memorising_denoiser(train, sched)(x_k, k)
    chunked = memorising_denoiser(train, sched, chunk_size=7)(x_k, k)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-5)
    log_w = np.asarray(memorising_log_weights(train, x_k, k, sched), np.float64)
    np.testing.assert_allclose(np.exp(log_w).sum(1), 1.0, atol=1e-5)
    mean = np.exp(log_w) @ train.reshape(50, -1)
    np.testing.assert_allclose(posterior_mean(memorising_denoiser(train, sched), x_k, k, sched)
                               .reshape(6, -1)[1:], mean[1:], atol=1e-4)


@pytest.mark.parametrize("call,error,match", [
    (lambda s: memorising_denoiser(np.zeros((0, 2, 2, 1), np.float32), s), ValueError, "non-empty"),
    (lambda s: memorising_denoiser(np.zeros((3, 2, 2), np.float32), s), ValueError, r"\(N, H, W, C\)"),
    (lambda s: memorising_denoiser(np.zeros((3, 2, 2, 1), np.uint8), s), TypeError, "floating"),
    (lambda s: memorising_denoiser(_images(3), s, chunk_size=0), ValueError, "chunk_size = 0"),
    (lambda s: memorising_denoiser(_images(3), LinearBeta()), TypeError, "RespacedSchedule"),
    (lambda s: gaussian_denoiser(_images(3), np.zeros(2, int), s), ValueError, "train_labels"),
    (lambda s: gaussian_denoiser(_images(3), np.zeros(3, int), s, ridge=0.0), ValueError, "ridge"),
    (lambda s: memorising_log_weights(_images(3), _images(1), np.array([0]), s), ValueError, "k = 0"),
])
def test_references_refuse_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(RespacedSchedule(10))


# ---- probes -------------------------------------------------------------------------------
def test_whitening_statistics_are_per_channel_moments_and_one_pair_for_the_logits():
    def apply(params, x):
        return x, x * params + 1.0, jnp.sum(x, axis=(1, 2))  # pixels, a layer, "logits"
    images = _images(37, (3, 2, 2), seed=6)
    means, seconds = whitening_stats(apply, jnp.float32(2.0), images, batch_size=10)
    layer = images * 2.0 + 1.0
    np.testing.assert_allclose(means[1], layer.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(seconds[1], (layer ** 2).mean(axis=(0, 1, 2)), rtol=1e-5)
    logits = images.sum(axis=(1, 2))
    assert means[2].shape == () and seconds[2].shape == ()
    np.testing.assert_allclose(means[2], logits.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(seconds[2], (logits ** 2).mean(), rtol=1e-5)


def test_nearest_neighbour_probe_is_exact_on_its_own_images(digits):
    probe = nearest_neighbour_probe(digits.train_images[:300], digits.train_labels[:300], 10)
    np.testing.assert_array_equal(probe.classify(jnp.asarray(digits.train_images[:300])),
                                  digits.train_labels[:300])
    with pytest.raises(ValueError, match="no image of class"):
        nearest_neighbour_probe(_images(3), np.array([0, 0, 2]), 3)


# ---- the experiment against the exact posterior ----------------------------------------------
@pytest.fixture(scope="module")
def memorising_setup(digits):
    train, labels = digits.train_images[:300], digits.train_labels[:300]
    probe = nearest_neighbour_probe(train, labels, 10)
    starts = np.concatenate([digits.test_images] * 4)  # each with 4 noise draws
    return train, labels, probe, starts, np.asarray(probe.classify(jnp.asarray(starts)))


def _paired_deviation(setup, K, fractions, key):
    """Per level: mean and standard error over start images of ``kept - p``, where
    ``kept`` is whether the forward–backward chain of the memorising denoiser kept the
    probe's class and ``p = Σ_μ w_μ [label_μ = class]`` is the probability that a direct
    draw from the exact posterior (the categorical over training images) keeps it, for
    the same ``x_k`` (paired: the noise of the chain is all that differs)."""
    train, labels, probe, starts, start_class = setup
    sched = RespacedSchedule(K)
    steps = np.round(np.asarray(fractions) * K).astype(int)
    res = forward_backward(key, memorising_denoiser(train, sched), starts, steps, sched, probe,
                           return_images=True)
    x_k = np.asarray(noised_starts(key, starts, steps, sched))
    out = []
    for j, k in enumerate(steps):
        w = np.exp(np.asarray(memorising_log_weights(train, x_k[:, j], np.full(len(starts), k),
                                                     sched), np.float64))
        p = (w * (labels[None] == start_class[:, None])).sum(1)
        # the generated image is a training image (the chain's last step is E[x0|x_1])
        generated_class = np.asarray(probe.classify(jnp.asarray(res.generated[:, j])))
        kept = generated_class == start_class
        np.testing.assert_allclose(res.class_kept[j], kept.mean(), atol=1e-6)
        d = kept - p
        out.append((d.mean(), d.std(ddof=1) / math.sqrt(len(d))))
    return np.array(out), w, p


def test_memorising_forward_backward_samples_the_exact_posterior(memorising_setup):
    """The class-kept curve of the memorising denoiser's chain agrees with direct draws of
    the exact posterior within 4 standard errors plus the chain's discretisation error,
    which is large at K = 4 (+0.07 ± 0.007: the chain keeps the class too often, its
    Gaussian steps too narrow) and within 0.01 at K = 40 (measured at t = 0.3 … 0.6 on
    these 1,436 rows: at most 0.008 ± 0.009; at K = 100, over 30 keys, 0.005 ± 0.004)."""
    fractions = (0.25, 0.5, 0.75)
    coarse, _, _ = _paired_deviation(memorising_setup, 4, fractions, jax.random.key(0))
    fine, w, p = _paired_deviation(memorising_setup, 40, fractions, jax.random.key(0))
    assert np.all(np.abs(fine[:, 0]) <= 4 * fine[:, 1] + 0.01), fine
    worst = np.argmax(coarse[:, 0])
    assert coarse[worst, 0] > 3 * coarse[worst, 1], coarse  # the test sees the error …
    shrink = coarse[worst, 0] - fine[worst, 0]  # … and it shrinks at the same t
    assert shrink > 3 * math.hypot(coarse[worst, 1], fine[worst, 1]), (coarse, fine)
    # the expectation p equals the frequency of direct categorical draws
    train, labels, probe, starts, start_class = memorising_setup
    draws = jax.random.categorical(jax.random.key(3), jnp.log(jnp.asarray(w)), shape=(64, len(w)))
    kept = (labels[np.asarray(draws)] == start_class[None]).mean(0)
    se = math.sqrt(np.mean(p * (1 - p)) / kept.size)
    assert abs(kept.mean() - p.mean()) < 4 * se + 1e-3


def test_forward_backward_is_the_same_sharded_and_in_chunks(memorising_setup):
    train, labels, probe, starts, _ = memorising_setup
    sched = RespacedSchedule(10)
    eps = memorising_denoiser(train, sched)
    args = (jax.random.key(2), eps, starts[:12], [2, 5, 10], sched, probe)
    one = forward_backward(*args, mesh=data_mesh(1))
    many = forward_backward(*args, mesh=data_mesh(jax.device_count()), chunk_size=3)
    # other images of the same shapes reuse the compiled program
    compiled = _sharded_chunk._cache_size()
    forward_backward(jax.random.key(5), eps, starts[12:24], [2, 5, 10], sched, probe,
                     mesh=data_mesh(1))
    assert _sharded_chunk._cache_size() == compiled
    for a, b in zip(one[4:11], many[4:11]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert one.layers == ("pixels", "logits") and one.cosine.shape == (3, 2)
    assert np.all(one.cosine <= 1 + 1e-6) and np.all(one.l2 >= 0)
    rows = to_rows(one, "memorising", K=10)
    assert len(rows) == 3 * (1 + 2 * 2)
    assert {r["metric"] for r in rows} == {"class_kept", "cosine", "l2"}


@pytest.mark.parametrize("change,error,match", [
    ({"steps": [0, 3]}, ValueError, r"steps = 0 must be an integer step in \[1, K = 10\]"),
    ({"steps": [11]}, ValueError, "steps = 11"),
    ({"steps": [1.5]}, TypeError, "integers"),
    ({"steps": []}, ValueError, "non-empty"),
    ({"images": np.zeros((0, 8, 8, 1), np.float32)}, ValueError, "non-empty"),
    ({"images": np.zeros((2, 8, 8, 1), np.uint8)}, TypeError, "floating"),
    ({"eps_hat": lambda x, k: x}, TypeError, "EpsPredictor"),
    ({"probe": None}, TypeError, "Probe"),
    ({"key": 3}, TypeError, "key"),
])
def test_forward_backward_refuses_bad_input(memorising_setup, change, error, match):
    train, labels, probe, starts, _ = memorising_setup
    sched = RespacedSchedule(10)
    args = {"key": jax.random.key(0), "eps_hat": memorising_denoiser(train[:5], sched),
            "images": starts[:2], "steps": [1, 10], "schedule": sched, "probe": probe}
    args.update(change)
    with pytest.raises(error, match=match):
        forward_backward(**args)


# ---- training and the miniature -----------------------------------------------------------
def test_epoch_batches_visit_every_image_once_per_epoch():
    key = jax.random.key(0)
    stream = np.concatenate([np.asarray(epoch_batch_indices(key, s, 4, 10)) for s in range(5)])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))


def test_unet_training_resumes_bit_exactly_and_refuses_another_configuration(digits, tmp_path):
    config = MiniatureConfig.quick().unet
    straight = train_unet(config, digits, tmp_path / "a", progress=False)
    train_unet(config, digits, tmp_path / "b", progress=False, stop_after=10)
    resumed = train_unet(config, digits, tmp_path / "b", progress=False, resume=True)
    for a, b in zip(jax.tree.leaves(nnx.state(straight.ema_model)),
                    jax.tree.leaves(nnx.state(resumed.ema_model))):
        np.testing.assert_array_equal(a, b)
    assert resumed.test_loss == straight.test_loss | {"wall_s": resumed.test_loss["wall_s"]}
    other = dataclasses.replace(config, num_steps=config.num_steps + 1)
    with pytest.raises(ValueError, match="num_steps: 20 -> 21"):
        train_unet(other, digits, tmp_path / "b", progress=False, resume=True)
    with pytest.raises(ValueError, match="is not empty"):
        train_unet(config, digits, tmp_path / "b", progress=False)
    stored = json.loads((tmp_path / "b" / "config.json").read_text())
    assert ImageRunConfig.from_dict(stored).to_dict() == stored
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["command"] == "images-train"


def test_unet_config_refuses_bad_shapes():
    with pytest.raises(ValueError, match="groups = 8 must divide"):
        UNetConfig(channels=12)
    with pytest.raises(ValueError, match="multiples of 2"):
        UNetConfig(channel_mults=(1, 2)).check_image_shape((7, 8, 1))


@pytest.mark.slow
def test_quick_miniature_runs_end_to_end_and_resumes(digits, tmp_path):
    config = MiniatureConfig.quick()
    result = run_miniature(tmp_path, config, data=digits, progress=False)
    assert {r["denoiser"] for r in result.rows} == {"unet", "memorising", "gaussian"}
    for name, res in result.results.items():
        assert res.class_kept.shape == (3,) and np.all(np.isfinite(res.cosine)), name
        assert res.layers == ("pixels", "conv1", "conv2", "hidden", "logits")
    assert (tmp_path / "forward_backward.jsonl").exists()
    # the probe (the default one) on the 359 test digits: 0.98 measured, 0.95 is 4 binomial
    # standard errors below
    assert result.probe_accuracy >= 0.95 and "ema_loss" in result.unet_test_loss
    again = run_miniature(tmp_path, config, data=digits, progress=False)
    assert again.rows == result.rows


# ---- the command --------------------------------------------------------------------------
@pytest.mark.slow
def test_images_command_quick_writes_its_files_and_resumes_its_training(tmp_path, capsys):
    from rhm_jax.cli import main

    out = tmp_path / "images"
    assert main(["images", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["images.png", "meta.json",
                                                     "results.jsonl", "summary.json"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["config"]["quick"]
    assert set(meta["timings_s"]) >= {"training", "forward_backward"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"rhm_bp", "rhm_denoiser", "digits", "memorising", "gaussian"}
    assert summary["rhm_bp"]["width_log_snr"] > 0 and summary["rhm_bp"]["low_level"] == "l=4"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["panel"] for r in rows} == set(summary)
    printed = capsys.readouterr().out
    assert "class drop width" in printed and "exact BP" in printed
    trained = sorted(p.name.split("-")[0] for p in (tmp_path / "images-train").iterdir())
    assert trained == ["probe", "tree", "unet"]
    # again with --overwrite: the training runs are resumed (restored), the numbers the same
    assert main(["images", "--quick", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.parametrize("argv,match", [
    (["--num-steps", "1"], r"--num-steps = 1 must be"),
    (["--seed", "-1"], r"--seed = -1 must be"),
])
def test_images_command_refuses_a_bad_flag_in_one_line(tmp_path, capsys, argv, match):
    import re

    from rhm_jax.cli import main

    out = tmp_path / "images"
    with pytest.raises(SystemExit) as info:
        main(["images", "--quick", "--out", str(out), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert not out.exists() and not (tmp_path / "images-train").exists()


def test_class_drop_width_and_midpoint_of_a_linear_curve():
    from rhm_jax.images.compare import Panel, class_drop

    x = np.linspace(4.0, -4.0, 9)  # log-SNR falling along the grid
    kept = np.clip(0.5 + x / 8, 0.0, 1.0)  # 1 at x = 4, 0 at x = -4, chance 0
    low = np.linspace(1.0, 0.2, 9)
    panel = Panel("p", "p", np.linspace(0.1, 0.9, 9), x, kept, np.zeros(9), 0.0, ("pixels",),
                  low[:, None], np.zeros((9, 1)))
    drop = class_drop(panel)
    assert drop["width_log_snr"] == pytest.approx(4.0)  # from kept 0.75 (x=2) to 0.25 (x=-2)
    assert drop["midpoint_log_snr"] == pytest.approx(0.0, abs=1e-12)
    assert drop["low_level_at_midpoint"] == pytest.approx(0.6)
    assert drop["midpoint_t"] == pytest.approx(0.5)
