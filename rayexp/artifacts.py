"""What a trial stores, in one layout, read through one object.

Layout under the sweep's ``storage_path`` (local dir, NFS or ``s3://``; see docs/artifacts.md for
sizes)::

    pretrain_cache/{pretrain_key}/          shared by every trial with the same pretrain spec
        model.pt                            the pretrained model (models.checkpoint format)
        checkpoints/step_{step:07d}.pt      log-spaced pretraining checkpoints (artifacts.pretrain_checkpoints)
        history.json, meta.json, DONE
    pretrain_cache/start-{key}/             M_A of a task with start_from (its PPO on another reward),
        model.pt, history.json, meta.json   shared by every trial that names the same M_A
    {sweep}/trials/{trial_key}/
        trial.json                          resolved trial config, pretrain key, env config, facts
        ppo/policy_{iteration:06d}.pt       the policy after that many PPO iterations, every
                                            ppo.save_every and the last one (same format as pretraining)
        probes/{phase}.parquet              probe tables (pre, post, rl_pre, rl_post)
        rollouts.npz                        episodes of the final policy, when an analysis needs them
        analyses/{name}.json                a finished analysis's metrics (its stage is done)
        analyses/{name}.npz                 its arrays a sweep analysis reads again, when it has any
        metrics.json                        the trial's latest metrics (what `rayexp analyze` reads)
        FINISHED                            written last

``trial_key`` is the trial's MLflow ``rayexp.trial_key`` tag, so a run and its files find each
other. Everything that reads a trial (its own later stages, analyses, ``rayexp analyze``,
``rayexp report``) goes through :class:`TrialArtifacts`, which loads each piece lazily.

Every ``.pt`` above and every file of a cache entry has a ``{name}.sha256`` sidecar, checked on every
read (rayexp/storage.py, models/checkpoint.py): a changed or truncated checkpoint fails with one line
naming it and is never loaded; a damaged cache entry is also moved aside, so the next trial that
needs it pretrains it again.

Models load to the object's ``device`` (``"cpu"`` unless the trial loop says otherwise: a GPU trial's
probes and analyses run where it trains; :meth:`TrialArtifacts.on` gives the same trial on another
device). The device is a fact of the process that reads, so it does not travel when the object is
pickled to another worker; nor does ``learner_gpus``, the GPU share an analysis that trains
(negation's PPO) may give its learner.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from rayexp.cache import CACHE_DIR as CACHE
from rayexp.cache import PretrainCache
from rayexp.ppo_settings import PPOSettings
from rayexp.settings import TrialConfig
from rayexp.specs import build_process
from rayexp.storage import Storage

TRIALS = "trials"


def log_spaced_steps(total: int, n: int) -> list[int]:
    """About ``n`` checkpoint steps in [0, total]: 0, the last step, and log-spaced ones between."""
    if n <= 0 or total <= 0:
        return [0] if n > 0 else []
    if n == 1:
        return [total]
    inner = {round(math.exp(math.log(total) * i / (n - 2))) for i in range(n - 1)} if n > 2 else set()
    return sorted({0, total} | {s for s in inner if 0 < s <= total})


def policy_name(iteration: int) -> str:
    return f"policy_{iteration:06d}.pt"


class TrialArtifacts:
    """One trial's stored artifacts (lazily loaded, cached per object)."""

    def __init__(self, storage_path: str, sweep: str, key: str, device: str = "cpu"):
        self.store = Storage(storage_path)
        self.sweep, self.key = sweep, key
        self.rel = f"{sweep}/{TRIALS}/{key}"
        self.device = device  # where models load (rayexp.context.trial_device decides it for a trial)
        # the GPU share a PPO learner started by an analysis may take (negation's retraining): the trial's
        # learner share (TrialContext.learner_gpus), set by the TrialContext that holds it; 0 = the CPU
        self.learner_gpus = 0.0
        self._on: dict[str, TrialArtifacts] = {device: self}

    def __repr__(self) -> str:
        return f"TrialArtifacts({self.store.uri!r}, {self.sweep!r}, {self.key!r}, device={self.device!r})"

    def __reduce__(self):  # ships to Ray workers as its address, not its loaded models nor this device
        return (TrialArtifacts, (self.store.uri, self.sweep, self.key))

    def on(self, device: str) -> TrialArtifacts:
        """The same trial with models loaded to ``device`` (one object per device, each caching its own)."""
        if device not in self._on:
            self._on[device] = TrialArtifacts(self.store.uri, self.sweep, self.key, device)
            self._on[device]._on = self._on
        return self._on[device]

    def _p(self, rel: str) -> str:
        return f"{self.rel}/{rel}"

    # ----------------------------------------------------------------------------- writing
    def write_meta(
        self,
        trial: dict[str, Any],
        pretrain_key: str,
        env_config: dict[str, Any],
        facts: dict,
        start_key: str | None = None,
        ppo: dict[str, Any] | None = None,
    ) -> None:
        meta = {"trial": trial, "pretrain_key": pretrain_key, "env": env_config, "facts": facts}
        if ppo is not None:
            meta["ppo"] = ppo
        if start_key is not None:
            meta["start_key"] = start_key
        self.store.write_json(self._p("trial.json"), meta)

    def put_policy(self, local_path, iteration: int) -> None:
        self.store.put(local_path, self._p(f"ppo/{policy_name(iteration)}"), checksum=True)

    def put_probe_table(self, table, phase: str) -> None:
        import tempfile
        from pathlib import Path

        import pyarrow.parquet as pq

        with tempfile.TemporaryDirectory() as tmp:
            pq.write_table(table, Path(tmp) / "t.parquet")
            self.store.put(Path(tmp) / "t.parquet", self._p(f"probes/{phase}.parquet"))

    def put_rollouts(self, local_npz) -> None:
        self.store.put(local_npz, self._p("rollouts.npz"))

    def write_metrics(self, metrics: dict[str, float]) -> None:
        self.store.write_json(self._p("metrics.json"), metrics)

    def put_analysis_arrays(self, name: str, arrays: dict[str, Any]) -> None:
        import tempfile
        from pathlib import Path

        import numpy as np

        with tempfile.TemporaryDirectory() as tmp:
            np.savez_compressed(Path(tmp) / "a.npz", **arrays)
            self.store.put(Path(tmp) / "a.npz", self._p(f"analyses/{name}.npz"))

    def finish_analysis(self, name: str, metrics: dict[str, float]) -> None:
        self.store.write_json(self._p(f"analyses/{name}.json"), metrics)

    def mark_finished(self) -> None:
        self.store.write_json(self._p("FINISHED"), {})

    def apply_retention(self, retention: str) -> None:
        """``final``: drop intermediate policies; ``none``: drop models, tables and rollouts too."""
        if retention == "all":
            return
        policies = self.ppo_iterations()
        for it in policies[:-1] if retention == "final" else policies:
            self.store.delete(self._p(f"ppo/{policy_name(it)}"))
        if retention == "none":
            for rel in ("probes", "rollouts.npz"):
                self.store.delete(self._p(rel))

    # ----------------------------------------------------------------------------- reading
    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        if not self.store.exists(self._p("trial.json")):
            raise FileNotFoundError(f"{self.store.path(self.rel)}: no trial.json (not a trial, or it never started)")
        return self.store.read_json(self._p("trial.json"))

    @property
    def config(self) -> dict[str, Any]:
        """The resolved trial config as a dict (TrialConfig.model_dump())."""
        return self.meta["trial"]

    @functools.cached_property
    def trial(self) -> TrialConfig:
        return TrialConfig.model_validate(self.config)

    @property
    def ppo_settings(self):
        """The PPO settings the trial's PPO ran with (resolved by the driver), as a PPOSettings."""
        return PPOSettings.model_validate(self.meta["ppo"])

    @property
    def env_config(self) -> dict[str, Any]:
        """The RL env config (``envs.gym_env.make_env``); ``["process"]`` is the stream's spec."""
        return self.meta["env"]

    @property
    def pretrain_key(self) -> str:
        return self.meta["pretrain_key"]

    @property
    def finished(self) -> bool:
        return self.store.exists(self._p("FINISHED"))

    def process(self):
        """The pretraining process (an ``envs`` HMM)."""
        return build_process(self.config["process"])

    def stream(self):
        """The RL stream's process."""
        return build_process(self.env_config["process"])

    def _load(self, rel: str):
        from models.checkpoint import CorruptCheckpoint, load_checkpoint  # torch

        if not self.store.exists(rel):
            raise FileNotFoundError(f"{self.store.path(rel)}: not stored (retention setting, or the stage has not run)")
        try:
            return load_checkpoint(self.store.local_file(rel), map_location=self.device)[0]
        except CorruptCheckpoint as err:
            if rel.startswith(f"{CACHE}/"):
                # this trial cannot pretrain again mid-stage, but no later trial may reuse the entry
                PretrainCache(self.store.uri).repair(rel.split("/")[1])
            # one line naming the stored file (a remote store's local copy is a scratch path)
            local = str(self.store.local_file(rel))
            raise CorruptCheckpoint(str(err).replace(local, self.store.path(rel))) from None

    @property
    def start_key(self) -> str | None:
        """Cache key of M_A when the task started from one (``task.start_from``), else None."""
        return self.meta.get("start_key")

    @functools.cache  # noqa: B019  (one object per trial; models are what is worth caching)
    def model_before(self):
        """The model PPO started from: the pretrained model, or M_A under ``task.start_from``."""
        return self._load(f"{CACHE}/{self.start_key or self.pretrain_key}/model.pt")

    @functools.cache  # noqa: B019
    def model_pretrained(self):
        return self._load(f"{CACHE}/{self.pretrain_key}/model.pt")

    @functools.cache  # noqa: B019
    def random_init(self):
        """The probe control: the architecture at its initialisation (pretraining's seed)."""
        from models.transformer import Transformer

        seed = self.meta["facts"].get("pretrain_seed", self.config.get("seed", 0))
        # initialised on the CPU (its seeded generator), then moved: the same weights on every device
        return Transformer(self.model_pretrained().cfg, seed=seed).to(self.device).eval()

    def pretrain_steps(self) -> list[int]:
        names = self.store.listdir(f"{CACHE}/{self.pretrain_key}/checkpoints")
        return sorted(int(n[5:-3]) for n in names if n.startswith("step_") and n.endswith(".pt"))

    def pretrain_checkpoint(self, step: int):
        return self._load(f"{CACHE}/{self.pretrain_key}/checkpoints/step_{step:07d}.pt")

    def ppo_iterations(self) -> list[int]:
        names = self.store.listdir(self._p("ppo"))
        return sorted(int(n[7:-3]) for n in names if n.startswith("policy_") and n.endswith(".pt"))

    def policy(self, iteration: int):
        """The policy's transformer after ``iteration`` PPO iterations (0: the pretrained model)."""
        return self.model_before() if iteration == 0 else self._load(self._p(f"ppo/{policy_name(iteration)}"))

    @functools.cache  # noqa: B019
    def model_after(self):
        its = self.ppo_iterations()
        if not its:
            raise FileNotFoundError(f"{self.store.path(self.rel)}/ppo: no policy stored yet")
        return self.policy(its[-1])

    def probe_table(self, phase: str):
        import pyarrow.parquet as pq

        return pq.read_table(self.store.local_file(self._p(f"probes/{phase}.parquet")))

    def probe_phases(self) -> list[str]:
        return [n[: -len(".parquet")] for n in self.store.listdir(self._p("probes")) if n.endswith(".parquet")]

    def rollouts(self) -> dict[str, Any]:
        import numpy as np

        with np.load(self.store.local_file(self._p("rollouts.npz"))) as z:
            return {k: z[k] for k in z.files}

    def metrics(self) -> dict[str, float]:
        return self.store.read_json(self._p("metrics.json")) if self.store.exists(self._p("metrics.json")) else {}

    def analysis_metrics(self, name: str) -> dict[str, float] | None:
        """Metrics of a finished analysis, None when it has not finished."""
        rel = self._p(f"analyses/{name}.json")
        return self.store.read_json(rel) if self.store.exists(rel) else None

    def analysis_arrays(self, name: str) -> dict[str, Any] | None:
        """The arrays an analysis stored (:attr:`rayexp.analysis.AnalysisResult.arrays`), None where it
        stored none (an older trial, or an analysis that keeps none)."""
        import numpy as np

        rel = self._p(f"analyses/{name}.npz")
        if not self.store.exists(rel):
            return None
        with np.load(self.store.local_file(rel), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def size_bytes(self) -> dict[str, int]:
        """Bytes of this trial's own files and of its (shared) pretrain cache entry."""
        return {
            "trial": self.store.size(self.rel),
            "pretrain_cache_entry": self.store.size(f"{CACHE}/{self.pretrain_key}"),
        }


def find_trials(storage_path: str, sweep: str, finished_only: bool = True) -> list[TrialArtifacts]:
    """Every trial stored for ``sweep`` (those with a FINISHED marker unless told otherwise)."""
    store = Storage(storage_path)
    trials = [TrialArtifacts(storage_path, sweep, k) for k in store.listdir(f"{sweep}/{TRIALS}")]
    trials = [t for t in trials if t.store.exists(t._p("trial.json"))]
    return [t for t in trials if t.finished] if finished_only else trials
