"""What an exported ONNX file says about itself (its `metadata_props`), so that it can be used
without this project: the classes, the input layout and the preprocessing, the network.

Every value is a string (ONNX's rule); lists and dicts are JSON. ONNX Runtime shows them as
`InferenceSession(path).get_modelmeta().custom_metadata_map`."""
import json
import os

from .prediction import resize_short_side

LAYOUT = "NCHW"
CHANNELS = "RGB"
PIXEL_RANGE = "0-255"


def onnx_metadata(model, class_names):
    """{key: str} describing `model` (a training.model.Model) and its input."""
    pre = model.preprocessing
    _, height, width = pre.data_shape
    short = resize_short_side(pre)
    return {
        "class_names": json.dumps(list(class_names)),
        "num_classes": str(model.num_classes),
        "input_layout": LAYOUT,
        "channel_order": CHANNELS,
        "pixel_range": PIXEL_RANGE,
        "mean_rgb": json.dumps([float(v) for v in pre.mean_rgb]),
        "std_rgb": json.dumps([float(v) for v in pre.std_rgb]),
        "resize_short_side": str(short),
        "crop_size": json.dumps([height, width]),
        "preprocessing": (f"decode as {CHANNELS} with {PIXEL_RANGE} values, resize (bilinear) the "
                          f"short side to {short} pixels and the other to long * {short} // "
                          f"short, centre-crop {height}x{width}, subtract "
                          f"mean_rgb and divide by std_rgb per channel, layout {LAYOUT}"),
        "network": model.network or "",
        "network_config": json.dumps(model.config, sort_keys=True),
        "dataset": model.dataset,
        "weights": os.path.basename(model.params_file) if model.params_file else "random",
    }


def set_metadata(proto, metadata):
    """Replace the ModelProto's metadata_props by `metadata`."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto
