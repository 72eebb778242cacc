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

The entry points call `utility.setup_process()` (importing this package changes nothing
process-wide), parse (`cli`), resolve (`job.resolve_job`) and hand the Job to `loop.run`.
"""
import network  # noqa: F401  (first: without MXNet, one line says which Python to use)

from .checkpoint import Checkpoints, weights_digest
from .cli import add_common_arguments, parse_with_presets
from .data import RecordFile, check_record_file, record_iter
from .errors import ConfigError, TrainingDiverged
from .job import (
                  Job,
                  contexts_for,
                  create_kvstore,
                  default_lr_steps,
                  network_config,
                  resolve_job,
                  run_name,
)
from .loop import evaluate, fit, run
from .metrics import Stats
from .optim import lr_of_epoch, make_lr_scheduler, make_optimizer

__all__ = ["Checkpoints", "ConfigError", "Job", "RecordFile", "Stats", "TrainingDiverged",
           "add_common_arguments", "check_record_file", "contexts_for", "create_kvstore",
           "default_lr_steps", "evaluate", "fit", "lr_of_epoch", "make_lr_scheduler",
           "make_optimizer", "network_config", "parse_with_presets", "record_iter",
           "resolve_job", "run", "run_name", "weights_digest"]
