"""Section 7.2 / Figure 4 at reduced scale, offline: MNIST from the 10,000 real test
images in ../shared/data/mnist (8,000 train / 2,000 test), Dropout CNN with K = 128,
linear decoder, 12 dropout samples. After every epoch the noise-free latent is
normalised and rescaled to the next entropy cap (nats, mean-field Gaussian bound),
compensated in the decoder. Run with --config.model.noise=True and False.
Run from the repository root."""

from pathlib import Path

from ibjax.config import from_file


def get_config():
    config = from_file(Path(__file__).with_name("mnist_dropout_cnn.py"))
    config.data.source = "idx"
    config.data.path = "../shared/data/mnist"
    config.data.split_at = 8000
    config.train.learning_rate = 1e-3
    config.capping.schedule = (400.0, 200.0, 100.0, 50.0, 0.0, -50.0, -100.0, -200.0, -400.0, -800.0,
                               -1600.0, -3200.0, -6400.0, -12800.0)
    config.capping.num_examples = 4000
    # A plateau test per 8,000-image epoch, as the results page's Figure 4 was made
    # (before train.plateau_examples existed); the capped epochs are what is studied here.
    config.train.plateau_examples = 0
    config.train.num_epochs = len(config.capping.schedule)
    return config
