"""Training: fit(cfg, run_dir, resume) -> FitResult.

    prepare.py     the run's data: scan, split or its record, caches, what the scan reported
    state.py       TrainState, the one owner of what changes during a run; checkpoints of it
    loop.py        fit(): the run folder's lock, the epochs, the stop rules agreed by all ranks
    epoch.py       one epoch's optimizer steps and the validation pass
    optim.py       optimizer, parameter groups, learning-rate schedule
    bnstats.py     BatchNorm re-estimation, the one-class warning
    runfolder.py   the run folder: lock, config, split, checkpoints, prune, best
    distributed.py torchrun set-up and agree(): every stop decision goes through it
    report.py      what a run says (rank 0 only)
Uses data/, models/ and the top-level config, checkpoint and runtime; nothing in data/,
infer/ or models/ imports it.
"""

from imgcls.train.loop import fit
from imgcls.train.state import FitResult

__all__ = ["fit", "FitResult"]
