"""Training for train_model.py and train_imagenet.py, one module per job:

- `cli`: the shared flags (network config flags come from the registry) and two-pass presets;
- `job`: `resolve_job` turns parsed flags into a frozen, grouped `Job`, or a `ConfigError`;
- `data`: record-file checks and the ImageRecordIter readers;
- `optim`: optimiser, weight-decay rule, lr schedule, initialisation;
- `checkpoint`: atomic checkpoints (with PREFIX-model.json: what the model is), discovery, loading;
- `params`: parameter files matched against a graph by name and shape (--pretrained, scoring);
- `metrics`: running loss and accuracy;
- `scoring`: the one evaluation over a record file (per-epoch validation and tools/score.py);
- `loop`: `fit` (resume, fine-tuning, checkpoints, per-epoch validation) and `evaluate`;
- `model`, `prediction`: a trained model for the after-training tools (score, predict, export).

The entry points parse (`cli`), resolve (`job.resolve_job`) and hand the Job to `loop.run`.
"""
import os

# MXNet reads this at every bind: its "Subgraph backend MKLDNN is activated" line would bury
# the project's log (the per-reader line is filtered in `data`).
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

import utility  # noqa: E402

# Freed buffers stay in the process for the next step instead of page-faulting in again
# (utility.keep_freed_memory; $IGC_KEEP_FREED_MEMORY=0 turns it off).
utility.keep_freed_memory()

from .checkpoint import Checkpoints, weights_digest  # noqa: E402
from .cli import add_common_arguments, parse_with_presets  # noqa: E402
from .data import RecordFile, check_record_file, record_iter  # noqa: E402
from .errors import ConfigError, TrainingDiverged  # noqa: E402
from .job import (  # noqa: E402
                  Job,
                  contexts_for,
                  create_kvstore,
                  default_lr_steps,
                  network_config,
                  resolve_job,
                  run_name,
)
from .loop import evaluate, fit, run  # noqa: E402
from .metrics import Stats  # noqa: E402
from .optim import lr_of_epoch, make_lr_scheduler, make_optimizer  # noqa: E402

__all__ = ["Checkpoints", "ConfigError", "Job", "RecordFile", "Stats", "TrainingDiverged",
           "add_common_arguments", "check_record_file", "contexts_for", "create_kvstore",
           "default_lr_steps", "evaluate", "fit", "lr_of_epoch", "make_lr_scheduler",
           "make_optimizer", "network_config", "parse_with_presets", "record_iter",
           "resolve_job", "run", "run_name", "weights_digest"]
