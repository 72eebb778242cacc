"""Loss and top-1 / top-k accuracy of a graph and its weights over a whole record file: the one
evaluation that training's per-epoch validation and tools/score.py share."""
import logging

import mxnet as mx

import network

from .data import check_record_file, record_iter
from .metrics import Stats
from .precise_bn import recompute as precise_bn_stats

LOGGER = logging.getLogger("igc.train")
# Validation split written by tools/make_rec.sh for each kind of dataset.
VAL_SPLIT = {"imagenet": "val"}
DEFAULT_VAL_SPLIT = "test"
TRAIN_SPLIT = "train"


def score_batches(symbol, arg_params, aux_params, batches, data_shape, batch_size, contexts,
                  top_k, num_classes=None):
    """Stats.values() over `batches` (a fresh reader), padding of the last batch excluded, and
    with num_classes the confusion matrix ('confusion', rows: true labels).

    A fresh inference module each time: MXNet 1.9's MKLDNN inference graph caches the weights it
    first saw, so a module bound once and given new weights later scores the old ones; and an
    inference pass through the training executors makes the next updates nondeterministic.
    A fresh reader too: after a reset, ImageRecordIter skips the records it borrowed to pad the
    previous pass's last batch (and with round_batch=False it reports no padding)."""
    # Inference runs the rewritten graph (BatchNorm folded, IGCV3's permutation gone): the same
    # function, and what a deployed model runs.
    symbol, arg_params, aux_params = network.optimize_for_inference(
        symbol, arg_params, aux_params, device=contexts[0].device_type)
    module = mx.mod.Module(symbol, data_names=("data",), label_names=("softmax_label",),
                           context=list(contexts), logger=LOGGER)
    module.bind(data_shapes=[("data", (batch_size,) + tuple(data_shape))],
                label_shapes=[("softmax_label", (batch_size,))], for_training=False)
    module.set_params(arg_params, aux_params)
    stats = Stats(top_k, num_classes)
    for batch in batches:
        module.forward(batch, is_train=False)
        valid = batch.data[0].shape[0] - batch.pad
        probs = module.get_outputs()[0].asnumpy()[:valid]
        stats.update(probs, batch.label[0].asnumpy()[:valid])
    extra = {} if num_classes is None else {"confusion": stats.confusion}
    return dict(stats.values(), images=stats.count, **extra)


def score_model(model, split=None, batch_size=200, threads=4, top_k=5, precise_bn=0,
                confusion=False):
    """Score a training.model.Model on `split` (default: the dataset's validation split) in its
    data directory; returns {'loss', 'acc', 'top5-acc' (when there are more than 5 classes),
    'images', 'records'} and, with confusion=True, 'confusion' (a matrix, rows: true labels).
    precise_bn=N first recomputes the BatchNorm statistics from N batches
    of the training split (read with the validation preprocessing)."""
    split = split or VAL_SPLIT.get(model.dataset, DEFAULT_VAL_SPLIT)
    record = check_record_file(model.data_dir, split, model.num_classes)
    model.check_data(record)
    pre = model.preprocessing
    aux_params = model.aux_params
    if precise_bn:
        train = check_record_file(model.data_dir, TRAIN_SPLIT, model.num_classes)
        batches = record_iter(train, min(batch_size, train.num_records), pre.data_shape,
                              pre.mean_rgb, pre.std_rgb, pre.augment, threads=threads,
                              shuffle=True, seed=0)
        aux_params = precise_bn_stats(model.symbol, model.arg_params, aux_params, batches,
                                      model.contexts[0], precise_bn)
    batch_size = min(batch_size, record.num_records)
    batches = record_iter(record, batch_size, pre.data_shape, pre.mean_rgb, pre.std_rgb,
                          pre.augment, threads=threads)
    values = score_batches(model.symbol, model.arg_params, aux_params, batches,
                           pre.data_shape, batch_size, model.contexts,
                           top_k if model.num_classes > top_k else 0,
                           model.num_classes if confusion else None)
    return dict(values, records=record.rec)
