"""Ray Tune as the search tool (``--tool ray``): the same space (``bayes``: ``HyperOptSearch``
with the hyperopt space; ``random``: ``tune.choice`` / ``uniform`` / ``quniform`` /
``loguniform``; ``exhaustive``: ``tune.grid_search``), one trial at a time on a local Ray
instance (``ray.init(num_cpus=1, include_dashboard=False)``).

The compat patches do not reach Ray's worker processes, and ``ray.tune`` itself needs them
there (``np.bool8``), so the instance is started with a ``worker_process_setup_hook`` that
imports ``recbole_unrank.compat`` first; the prepared search is pickled once (without its loaders,
rebuilt in the worker) and handed to the workers through ``tune.with_parameters`` (Ray's object
store). Ray Tune 2.x also needs ``pyarrow``. A Ray instance started by the caller is used as it
is, and must have been given the same hook."""

from __future__ import annotations

import json
import shutil
import tempfile

from recbole_unrank.errors import UnrankError, option
from recbole_unrank.tuning.search import TuneSearch, plain
from recbole_unrank.tuning.space import hyperopt_space, ray_param_space

__all__ = ["check_ray", "start_ray", "run_ray"]


def check_ray(algo: str) -> None:
    """Ray Tune must be importable, with pyarrow (its result storage needs it)."""
    tool = option("tool", "ray")
    try:
        import ray  # noqa: F401
        from ray import air, tune  # noqa: F401
        from ray.air import session  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (any import failure means no ray here)
        raise UnrankError(f"{tool}: Ray Tune cannot be imported ({type(exc).__name__}: {exc}); "
                          "pip install 'ray[tune]' or use hyperopt") from None
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UnrankError(f"{tool}: Ray Tune 2.x stores its results through pyarrow, which is not "
                          "installed: pip install pyarrow, or use hyperopt") from None
    if algo == "bayes":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            raise UnrankError(f"{tool} with {option('algo', 'bayes')} needs hyperopt: {exc}") from None


def _worker_setup() -> None:
    """Run in every Ray worker before anything else: the compat patches (numpy 2 aliases that
    ray.tune itself needs, torch.load for RecBole checkpoints) do not travel from the driver."""
    from recbole_unrank import compat  # noqa: F401  (the patches, before ray.tune runs)


def start_ray() -> bool:
    """A local Ray instance (1 CPU, no dashboard) whose workers import recbole_unrank.compat first;
    returns whether it was started here (then the caller shuts it down at the end)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"worker_process_setup_hook": _worker_setup})
    except Exception as exc:  # noqa: BLE001  (any failure to start means no ray here)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UnrankError(f"{option('tool', 'ray')}: a local Ray instance could not start "
                          f"({type(exc).__name__}: {first}); use hyperopt") from None
    return True


_WORKER_CACHE: dict[str, TuneSearch] = {}


def _trainable(config: dict, blob: bytes | None = None) -> None:
    """Ray Tune function trainable: one trial on the search prepared by the driver."""
    import hashlib

    from ray.air import session

    from recbole_unrank import compat  # noqa: F401  (inside the worker, before RecBole is unpickled)

    key = hashlib.sha1(blob).hexdigest()
    search = _WORKER_CACHE.get(key)
    if search is None:
        _WORKER_CACHE.clear()
        search = _WORKER_CACHE[key] = TuneSearch.unpack(blob)
    record = search.evaluate_trial(dict(config), label=f"ray-{session.get_trial_id()}")
    session.report({"loss": float(record["loss"]), "record": json.dumps(plain(record))})


def run_ray(search: TuneSearch, algo: str, max_evals: int, seed: int) -> int:
    """The search on Ray Tune; its trials are added to ``search`` in the order they started.
    Returns the number of trials run."""
    from ray import air, tune

    storage = tempfile.mkdtemp(prefix="unrank-ray-")
    try:
        resources = {"cpu": 1}
        if str(search.run.config["device"]).startswith("cuda"):
            resources["gpu"] = 1
        trainable = tune.with_resources(tune.with_parameters(_trainable, blob=search.pack()), resources)
        search_alg, kwargs, num_samples = None, {}, max_evals
        if algo == "bayes":
            from ray.tune.search.hyperopt import HyperOptSearch

            search_alg = HyperOptSearch(space=hyperopt_space(search.specs), metric="loss", mode="min",
                                        random_state_seed=int(seed))
        else:
            kwargs["param_space"] = ray_param_space(search.specs, algo)
            if algo == "exhaustive":
                num_samples = 1  # the grid is every combination
            else:
                from ray.tune.search import BasicVariantGenerator

                search_alg = BasicVariantGenerator(random_state=int(seed))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric="loss", mode="min", search_alg=search_alg,
                                        num_samples=num_samples, max_concurrent_trials=1),
            run_config=air.RunConfig(storage_path=storage, name="unrank-hyper", verbose=0),
            **kwargs,
        )
        records = []
        for result in tuner.fit():
            if result.error is not None or "record" not in (result.metrics or {}):
                raise UnrankError(f"a Ray Tune trial failed: {str(result.error).strip().splitlines()[-1]}")
            records.append(json.loads(result.metrics["record"]))
        for record in sorted(records, key=lambda r: r["started"]):
            search.add(record)
        return len(records)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
