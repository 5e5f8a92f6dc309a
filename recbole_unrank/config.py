"""RecBole ``Config`` with this package's properties (``unrank_*`` keys and our models' YAML).

Layers, lowest first: RecBole's overall.yaml -> ``properties/unrank.yaml`` -> model YAML
(ours for WMF, RecBole's for the rest) -> dataset YAML -> ``config_files`` -> ``config_dict``
-> command line, exactly RecBole's order with our file slotted in.
"""

from __future__ import annotations

import os
from typing import Any

from recbole_unrank import compat  # noqa: F401
from recbole.config import Config

from recbole_unrank.models import get_model

__all__ = ["UnrankConfig", "PROPERTIES_DIR"]

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "properties")


class UnrankConfig(Config):
    """RecBole's ``Config`` that also reads recbole-unrank's properties files."""

    def __init__(
        self,
        model: str | type | None = None,
        dataset: str | None = None,
        config_file_list: list[str] | None = None,
        config_dict: dict[str, Any] | None = None,
    ):
        if isinstance(model, str):
            model = get_model(model)
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        ours = [os.path.join(PROPERTIES_DIR, "unrank.yaml")]
        ours.append(os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"))
        model_type = self.internal_config_dict["MODEL_TYPE"]
        # RecBole's own model YAML must win over our project-wide defaults, so re-apply it.
        recbole_model_file = os.path.join(
            os.path.dirname(os.path.realpath(__import__("recbole").__file__)),
            "properties", "model", f"{model}.yaml",
        )
        for file in ours + [recbole_model_file]:
            if os.path.isfile(file):
                self._update_internal_config_dict(file)
        self.internal_config_dict["MODEL_TYPE"] = model_type
