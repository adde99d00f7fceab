"""Stage 2: train the conditional EBMs by recovery likelihood; save the EMA weights.

Training resumes from the newest usable checkpoint in --checkpoints (the folder of the spec's
training hash), and then says so with one line on stderr: `resumed from step N`. On several
processes only process 0 writes the outputs (as in stages/sample.py)."""

import sys

from common import input_checks, load_experiment, parser, run_stage

from drlx.evaluate.plots import loss_curve
from drlx.io import read_arrays, save_model, write_json
from drlx.sharding import barrier, is_primary
from drlx.train.checkpoint import Checkpointer
from drlx.train.fit import fit


def report_resumed(step: int) -> None:
    print(f"resumed from step {step}", file=sys.stderr, flush=True)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--model", required=True, help="output: EMA weights")
    p.add_argument("--history", required=True, help="output: loss history (JSON)")
    p.add_argument("--plot", required=True, help="output: loss curve (PNG)")
    p.add_argument("--checkpoints", required=True, help="checkpoint folder (kept across runs)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    cond = exp.conditioning
    arrays = read_arrays(args.data, "train", *(cond.arrays_needed("train") if cond else ()))
    with input_checks(KeyError, ValueError):
        conditions = None if cond is None else cond.values(arrays, "train")
    checkpointer = Checkpointer(args.checkpoints, exp.training_hash)
    state, history = fit(
        exp,
        arrays["train"],
        checkpointer,
        progress=exp.runtime.progress,
        on_resume=report_resumed,
        conditions=conditions,
    )
    if is_primary():
        save_model(args.model, (state.ema, state.initializer_ema))
        write_json(args.history, history)
        loss_curve(
            args.plot,
            [h["step"] for h in history],
            [h["loss"] for h in history],
            f"{exp.name}: recovery-likelihood loss",
        )
    barrier("drlx train stage: outputs written")


if __name__ == "__main__":
    run_stage(main)
