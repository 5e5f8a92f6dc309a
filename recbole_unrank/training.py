"""Training a model the RecBole way: ``run_recbole``'s seed, trainer and early stopping."""

from __future__ import annotations

import logging
import os
import random
import time

import numpy as np
import torch
from recbole.utils import get_trainer, init_seed

from recbole_unrank import compat  # noqa: F401
from recbole_unrank.checkpoints import save_trained
from recbole_unrank.models import get_model
from recbole_unrank.progress import bars_shown
from recbole_unrank.unpickle import load_file

__all__ = ["train_model", "initial_model"]

logger = logging.getLogger("recbole_unrank")


def train_model(config, train_loader, valid_loader, path: str | None = None, tag: str = "model"):
    """Train a fresh model of ``config['model']`` on ``train_loader``'s data with RecBole's
    trainer (early stopping on ``valid_loader``); keep the best epoch. Returns ``(model, info)``.
    With ``path``, the best model is saved there as a RecBole checkpoint (atomically)."""
    init_seed(config["seed"], config["reproducibility"])
    model_class = get_model(config["model"])
    model = model_class(config, train_loader._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    scratch = (path or os.path.join(config["checkpoint_dir"], f"{tag}-{os.getpid()}.pth")) + ".tmp"
    os.makedirs(os.path.dirname(scratch) or ".", exist_ok=True)
    trainer.saved_model_file = scratch
    logger.info("training %s (%s) on %d interactions", config["model"], tag, len(train_loader._dataset))
    start = time.perf_counter()
    metric = config["valid_metric"]

    def progress(epoch_idx: int, valid_score: float) -> None:  # one compact line per epoch
        logger.info("[%s] epoch %d: valid %s %.4f (best %.4f, %.0fs)", tag, epoch_idx + 1, metric,
                    valid_score, trainer.best_valid_score, time.perf_counter() - start)

    # RecBole draws its epoch and evaluation bars wherever stderr goes (60-142 lines of a log
    # per run): like the methods' bars, they are drawn only when stderr is a terminal.
    best_score, _ = trainer.fit(
        train_loader, valid_loader, verbose=False, saved=True, show_progress=bars_shown(config["show_progress"]),
        callback_fn=progress,
    )
    elapsed = time.perf_counter() - start
    epochs = len(trainer.train_loss_dict)
    if os.path.isfile(scratch):  # the best epoch (RecBole saves it when validation improves)
        state = load_file(scratch, map_location=config["device"])
        model.load_state_dict(state["state_dict"])
        model.load_other_parameter(state.get("other_parameter"))
        if path:
            save_trained(state, config, path)
        os.remove(scratch)
    model.eval()
    logger.info("trained %s (%s): %d epochs, %.1fs, best valid %.4f", config["model"], tag, epochs, elapsed, best_score)
    return model, {"epochs": epochs, "time_s": elapsed, "best_valid_score": float(best_score)}


def initial_model(config, dataset):
    """The model exactly as :func:`train_model` starts training it (the run's seed, the same
    construction), with the global random states left as they were. Retraining never updates
    a block with no row left (its gradient is 0, so Adam's step is 0): it ends where this model
    has it (``l2unrank_twosided``'s whole users)."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        init_seed(config["seed"], config["reproducibility"])
        model = get_model(config["model"])(config, dataset).to(config["device"])
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
    return model.eval()
