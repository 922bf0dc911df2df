"""The pure train step: the member axis, devices, donation, the learning rate by name."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ibjax import config as configlib
from ibjax import data as datalib
from ibjax import experiment, step

ROOT = Path(__file__).resolve().parents[1]
GAMMAS = (0.001, 0.1, 1.0)
DIGITS = datalib.load_dataset("digits")


def digits_config(**overrides):
    config = configlib.from_file(ROOT / "configs" / "digits_condvar.py")
    config.train.progress_bar = False
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        config[section][field] = value
    return config


def run_steps(run, train_step, state, gammas, num_steps, batch_seed=3):
    """``num_steps`` steps from ``state``; returns the final state and each step's totals."""
    images, labels = jax.device_put((DIGITS.x_train, DIGITS.y_train), run.replicated)
    batches = np.asarray(datalib.epoch_batches(jax.random.key(batch_seed), DIGITS.x_train.shape[0],
                                               run.config.train.batch_size))
    key = jax.device_put(jnp.stack([jax.random.key(1)] * len(gammas)), run.replicated)
    gamma = jax.device_put(jnp.asarray(gammas, jnp.float32), run.replicated)
    all_totals = []
    for i in range(num_steps):
        totals = jax.device_put(step.zero_totals(run.config, len(gammas)), run.replicated)
        state, totals = train_step(state, totals, images, labels, jax.device_put(batches[i], run.batch_sharding),
                                   key, gamma)
        all_totals.append(jax.device_get(totals))
    return state, all_totals


def test_member_steps_equal_standalone_steps():
    population = experiment.setup(digits_config(population__gammas=GAMMAS), dataset=DIGITS)
    single = experiment.setup(digits_config(), dataset=DIGITS)
    pop_state, pop_totals = run_steps(population, population.train_step(), population.init_state(), GAMMAS, 5)
    for m, gamma in enumerate(GAMMAS):
        alone, totals = run_steps(single, single.train_step(), single.init_state(), (gamma,), 5)
        for a, b in zip(pop_totals, totals):
            assert float(a["loss"][m]) == pytest.approx(float(b["loss"][0]), rel=1e-5, abs=1e-6)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(pop_state.params)):
            # Adam amplifies float reassociation where a gradient is ~0; 1e-5 absolute
            # is two orders below one step (lr 1e-3).
            np.testing.assert_allclose(np.asarray(b[m]), np.asarray(a[0]), rtol=1e-5, atol=1e-5)
    # Different gammas really gave different members.
    first = jax.tree.leaves(pop_state.params)[0]
    assert not np.allclose(first[0], first[-1])


def test_sequential_member_map_equals_vmap():
    run = experiment.setup(digits_config(population__gammas=GAMMAS[:2]), dataset=DIGITS)
    a, totals_a = run_steps(run, run.train_step("vmap"), run.init_state(), GAMMAS[:2], 3)
    b, totals_b = run_steps(run, run.train_step("sequential"), run.init_state(), GAMMAS[:2], 3)
    for x, y in zip(totals_a, totals_b):
        np.testing.assert_allclose(x["loss"], y["loss"], rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"member_map.*'vmap', 'sequential'"):
        run.train_step("pmap")


def _steps_on_mesh(config, mesh, num_steps=4):
    run = experiment.setup(config, dataset=DIGITS, mesh=mesh)
    state, totals = run_steps(run, run.train_step(), run.init_state(), (config.objective.gamma,), num_steps, 1)
    losses = np.array([(float(t["loss"][0]), float(t["regularizer"][0])) for t in totals])
    return losses, jax.device_get(state.params)


def test_one_device_and_four_devices_agree():
    assert jax.device_count() == 4
    config = digits_config()
    one, params_one = _steps_on_mesh(config, step.make_mesh(jax.devices()[:1]))
    four, params_four = _steps_on_mesh(config, step.make_mesh(jax.devices()))
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_four)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_train_step_donates_its_state():
    run = experiment.setup(digits_config(), dataset=DIGITS)
    state = run.init_state()
    old_leaf = jax.tree.leaves(state.params)[0]
    run_steps(run, run.train_step(), state, (0.01,), 1)
    assert old_leaf.is_deleted()


def test_learning_rate_is_read_by_name_and_follows_the_plateau_scale():
    config = digits_config(train__learning_rate=0.002)
    run = experiment.setup(config, dataset=DIGITS)
    state = run.init_state()
    np.testing.assert_allclose(np.asarray(step.learning_rate(config, state)), [0.002])
    # Another transform in front of the chain moves the plateau state: a lookup by position would break.
    plateau = state.opt_state[1]._replace(scale=jnp.full((1,), 0.8 ** 3))
    shifted = state.replace(opt_state=(optax.EmptyState(), state.opt_state[0], plateau))
    np.testing.assert_allclose(np.asarray(step.learning_rate(config, shifted)), [0.002 * 0.8 ** 3], rtol=1e-6)
    # BatchNorm's `scale` parameters sit in Adam's moments too: the plateau scale is still the one found.
    adam = state.opt_state[0][0]
    with_bn = adam._replace(mu={"bn": {"scale": jnp.ones((1, 4))}, **adam.mu})
    batch_norm = state.replace(opt_state=((with_bn, *state.opt_state[0][1:]), plateau))
    np.testing.assert_allclose(np.asarray(step.learning_rate(config, batch_norm)), [0.002 * 0.8 ** 3], rtol=1e-6)


def test_zero_totals_carry_the_member_axis():
    totals = step.zero_totals(digits_config(), 3)
    assert all(v.shape == (3,) for v in totals.values())
    assert np.all(totals["bad_step"] == -1)


def test_data_joint_objective_has_the_a3_gradient_of_the_data_level_decoder_uncertainty():
    from ibjax import information

    config = digits_config(objective__loss="decoder_uncertainty", objective__joint="epoch")
    config.model.latent = "categorical"
    config.objective.regularizer = "none"
    config.model.noise = False
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, 64), jnp.int32)

    def data_level(theta):
        return information.decoder_uncertainty(jax.nn.softmax(theta), labels, 4)

    joint = information.categorical_joint(jax.nn.softmax(logits), labels, 4)
    decoder = jnp.log(information.optimal_decoder(joint))

    def surrogate(theta):
        out = {"z_log_probs": jax.nn.log_softmax(theta)[None], "decoder_log_probs": decoder,
               "logits": jnp.zeros((1, 64, 4))}
        return step.objective(config, 4, out, labels, 0.0, decoder)[0]

    # When the batch is the whole data set and p(y|z) is taken at the current parameters, the
    # surrogate equals H[Y|Z] and has its gradient (appendix A.3: the ∇p(y|z) term vanishes).
    assert float(surrogate(logits)) == pytest.approx(float(data_level(logits)), rel=1e-5)
    np.testing.assert_allclose(jax.grad(surrogate)(logits), jax.grad(data_level)(logits), rtol=1e-4, atol=1e-6)
    # float64 reference of the value: mean_b Σ_z p(z|x_b) (−log p(y_b|z)).
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    j = np.zeros((6, 4))
    np.add.at(j.T, np.asarray(labels), p)
    j /= 64
    log_p_y_z = np.log(j / j.sum(1, keepdims=True))
    want = np.mean(np.sum(p * -log_p_y_z[:, np.asarray(labels)].T, axis=1))
    assert float(surrogate(logits)) == pytest.approx(want, rel=1e-5)


def test_joint_field_is_validated():
    config = digits_config(objective__joint="epoch")
    with pytest.raises(configlib.ConfigError, match="config.objective.joint chooses"):
        configlib.validate(config)
    config = digits_config(objective__joint="dataset")
    with pytest.raises(configlib.ConfigError, match=r"config.objective.joint must be one of \('batch', 'epoch'\)"):
        configlib.validate(config)


def test_plateau_window_counts_examples_not_epochs():
    config = digits_config(train__plateau_examples=60000)
    assert configlib.default_config().train.plateau_examples == 60000 and config.train.batch_size == 128
    assert step.plateau_window(config, steps_per_epoch=11) == 469  # the paper's 60,000-image epoch, by hand
    config.train.plateau_examples = 1000
    assert step.plateau_window(config, steps_per_epoch=11) == 8    # ceil(1000 / 128)
    config.train.plateau_examples = 0
    assert step.plateau_window(config, steps_per_epoch=11) == 11   # one epoch of the training set


def _first_rate_drop(config, steps_per_epoch):
    """The optimiser step at which a constant loss first cuts the learning rate."""
    tx = step.make_optimizer(config, steps_per_epoch)
    params = {"w": jnp.ones(3)}
    opt_state = tx.init(params)
    update = jax.jit(lambda s: tx.update({"w": jnp.zeros(3)}, s, params, value=jnp.asarray(1.0))[1])
    for i in range(1, 2000):
        opt_state = update(opt_state)
        if step.learning_rate(config, step.TrainState(0, params, {}, opt_state)) < config.train.learning_rate:
            return i
    raise AssertionError("the rate never dropped")


def test_the_plateau_patience_is_counted_in_windows_of_plateau_examples():
    config = digits_config(train__plateau_patience=1)
    config.train.plateau_examples = 256                   # a window of 2 steps
    two = _first_rate_drop(config, steps_per_epoch=7)
    config.train.plateau_examples = 512                   # 4 steps: the drop comes twice as late
    assert _first_rate_drop(config, steps_per_epoch=7) == 2 * two
    config.train.plateau_examples = 0                     # per epoch of 2 steps: as the 2-step window
    assert _first_rate_drop(config, steps_per_epoch=2) == two
    # One window to set the best loss, patience + 1 windows without improvement.
    assert two == 2 * (1 + config.train.plateau_patience + 1)
