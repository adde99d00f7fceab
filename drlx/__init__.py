"""drlx: energy-based models by diffusion recovery likelihood, in JAX.

The public API, for notebooks and scripts (the DVC stages call the same functions):

    spec = drlx.load_spec("specs/eight_gaussians.yaml")   # validate (SpecError: file:line)
    exp = drlx.build(spec)                                 # objects and engine settings
    data = exp.data.splits(exp.seed)                       # {"train", "heldout", "heldout_b"}
    state, history = drlx.fit(exp, data["train"])          # train; report state.ema
    ebm = exp.ebm(state.ema, state.initializer_ema)        # CDRL's initializer, or None
    x = drlx.sample(exp, ebm, 1000)                        # generate from noise
    bound = drlx.likelihood_bound(exp, state.ema, data["heldout"][:100], data["train"])
    metrics = drlx.evaluate_samples(exp, ebm, x, data["heldout"], data["heldout_b"], "d.png")
    drlx.save_model("model.eqx", (state.ema, state.initializer_ema))
    ebm = exp.ebm(*exp.load_model("model.eqx"))
    # a conditional spec (`condition:`, docs/method.md §12): 100 samples of class 3, guided (w = 1)
    guide = drlx.classifier_free(np.full((100, 1), 3), exp.conditioning.null, 1.0)
    x = drlx.sample(exp, ebm, 100, guide)

Names load on first use, so `import drlx` (and every module of the package, which imports it)
pulls in nothing else: a stage depends only on the modules it imports.
"""

import importlib

from drlx._xla import add_default_flags, set_malloc_defaults

add_default_flags()
set_malloc_defaults()

_API = {
    "load_spec": "drlx.spec.load",
    "SpecError": "drlx.spec.load",
    "DrlxError": "drlx.errors",
    "build": "drlx.builder",
    "Experiment": "drlx.experiment",
    "fit": "drlx.train.fit",
    "sample": "drlx.samplers.many",
    "likelihood_bound": "drlx.density.estimate",
    "estimate_density": "drlx.density.estimate",
    "evaluate_samples": "drlx.evaluate.quality",
    "save_model": "drlx.io",
    "plain": "drlx.guidance",
    "classifier_free": "drlx.guidance",
    "compose": "drlx.guidance",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'drlx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
